"""The web app: the segmentation models in a browser, for people who have no Slicer installed.

    efficientseg-web [--port 8080] [--host 127.0.0.1] [--data DIR]

A trame page with trame-slicer's slice views and 3D view (slicer-core's MRML scene rendered on
the server), a drawer with the steps in order (load, model and inputs, settings, Segment), the
result's segments, quality score, warnings and downloads. The decisions live in
``session.SegmentationSession`` and the shared panel rules; this module only wires them to the
page.

One person uses the app at a time: the scene, the views and the page state are the server's,
and trame sends them to every connected browser, so a second browser gets a "busy" page (and a
websocket connection it opens anyway is closed) instead of the first user's data. When the user
closes the page, the run is stopped and everything they loaded is removed from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

from EfficientSegmentationCommon.errors import InputVolumeError
from MedNCASegmentLib.settings import MedNCASettings
from OSSNetSegmentLib.settings import OSSNetSettings
from EfficientSegmentationCommon.background import JobState

from .dicom_zip import MAX_UNPACKED_BYTES
from .session import (DOWNLOAD_FORMATS, SegmentationSession, list_data_files, page_defaults, setting_help,
                      settings_from_page, slider_range)

try:
    from trame.app import TrameApp
    from trame.app.file_upload import ClientFile
    from trame.widgets import html
    from trame_client.widgets.core import AbstractElement
    from trame_slicer.core import LayoutManager, SlicerApp
    from trame_slicer.rca_view import register_rca_factories
    from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
    from trame_vuetify.widgets import vuetify3 as v3
except ImportError as _error:  # the optional [web] dependencies
    _MISSING = _error
    TrameApp = object
else:
    _MISSING = None

LOG = logging.getLogger(__name__)
POLL_SECONDS = 0.25  # how often the page's progress follows the worker thread
BUSY_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>EfficientSegmentation: busy</title>
<meta http-equiv="refresh" content="15"></head><body style="font-family: sans-serif; margin: 3em">
<h1 id="busy">Someone else is using this segmentation server.</h1>
<p>It serves one person at a time, so that nobody sees another's images. This page tries again every
15 seconds; it opens as soon as the other person closes their page.</p></body></html>"""
VIEW_LAYOUT = "Quad View"
SETTING_KEYS = ("runs", "trained_steps", "global_steps", "refinement_steps", "preview", "resolution")  # see settings_from_page


class SessionGate:
    """Lets one browser connection in at a time; the others get the busy page or are closed."""

    def __init__(self, on_owner_left) -> None:
        self.owner: str | None = None
        self._on_owner_left = on_owner_left

    def connected(self, handler, client_id: str) -> None:
        # wslink calls this once per protocol object, so possibly twice for one connection.
        if self.owner in (None, client_id):
            self.owner = client_id
            return
        LOG.info("refusing a second session while one is active")
        socket = handler.connections.get(client_id)
        if socket is not None:
            asyncio.ensure_future(socket.close(code=4000, message=b"busy: someone else is using this server"))

    def closed(self, client_id: str) -> None:
        if client_id == self.owner:
            self.owner = None
            self._on_owner_left()


class SegmentationWebApp(TrameApp):
    """The page and its handlers; ``data_dir``: server-side image files offered for loading."""

    def __init__(self, server=None, data_dir: Path | None = None) -> None:
        if _MISSING is not None:
            raise RuntimeError(f"The web app needs its optional dependencies: pip install -e '.[web]' ({_MISSING}).")
        super().__init__(server)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(VIEW_LAYOUT)
        self.session = SegmentationSession(self.slicer_app.scene)
        self.data_dir = Path(data_dir) if data_dir else None
        self.gate = SessionGate(self.reset)
        self._watcher = None
        self.server.controller.on_server_bind.add(self._bind)
        self._init_state()
        self._build_ui()

    # -- state ------------------------------------------------------------------------------

    def _init_state(self) -> None:
        state = self.state
        state.model_items = [{"title": entry.title, "value": entry.id} for entry in self.session.models()]
        state.data_files = list_data_files(self.data_dir)
        self._reset_state()

    def _reset_state(self) -> None:
        """The page as a new user finds it: nothing loaded, the first model, the panels' defaults."""
        state = self.state
        state.model_id = state.model_items[0]["value"] if state.model_items else None
        state.data_file = None
        state.update(page_defaults())
        state.volume_items, state.input_0, state.input_1 = [], None, None
        state.load_message, state.load_note, state.loading = "", "", False
        state.segments, state.has_result, state.download_names = [], False, {}
        self._model_changed()
        self._sync_panel()

    def _entry(self):
        return self.session.entry(self.state.model_id) if self.state.model_id else None

    def _input_ids(self) -> list:
        entry = self._entry()
        return [self.state.input_0, self.state.input_1][:len(entry.inputs)] if entry else []

    def _settings(self) -> dict:
        return {key: self.state[key] for key in SETTING_KEYS}

    def _model_changed(self, keep_inputs: bool = False, **_) -> None:
        """A new model: its input selectors, filled by name (a new volume: the current choices stay)."""
        entry = self._entry()
        state = self.state
        state.method = entry.method if entry else ""
        state.model_inputs = list(entry.inputs) if entry else []
        state.model_description = entry.description if entry else "No model installed."
        if entry:
            chosen = self.session.guess_inputs(entry, self._input_ids() if keep_inputs else [])
            state.input_0, state.input_1 = (chosen + [None, None])[:2]
        self._inputs_changed()

    def _inputs_changed(self, **_) -> None:
        entry = self._entry()
        if entry is None:
            return
        problem = self.session.inputs_problem(entry, self._input_ids()) if self.session.volumes else "Load a volume first."
        if not problem:
            try:
                settings_from_page(entry, self._settings())
            except ValueError as error:  # e.g. a number typed out of range
                problem = str(error)
        self.session.panels[entry.method].set_input_problem(problem)
        self.session.panel = self.session.panels[entry.method]
        self._resolution_changed()
        self._sync_panel()

    def _resolution_changed(self, **_) -> None:
        from OSSNetSegmentLib.panel import resolution_text

        entry = self._entry()
        state = self.state
        reference = self.session.volume(state.input_0)
        if entry is None or entry.method != "ossnet" or reference is None:
            state.resolution_text = ""
            return
        try:
            state.resolution_text = resolution_text(reference, None, len(entry.inputs),
                                                    settings_from_page(entry, self._settings()), entry.orientation)
        except ValueError as error:  # e.g. a resolution typed out of range
            state.resolution_text = str(error)

    def _sync_panel(self) -> None:
        """Copy the panel's view-model onto the page (as the Slicer widget copies it onto Qt)."""
        view = self.session.panel.view()
        state = self.state
        state.button_text, state.button_enabled = view.button_text, view.button_enabled
        state.settings_enabled, state.running = view.settings_enabled, view.state.active
        state.progress_visible, state.progress_percent = view.progress_visible, view.progress_percent
        state.progress_text, state.status_text = view.progress_text, view.status_text
        state.result_text = view.result_text
        state.result_color = ("warning" if view.result_is_warning else "error" if view.result_style
                              else "info" if view.state is JobState.CANCELLED else "success")

    def _sync_result(self) -> None:
        session, state = self.session, self.state
        state.has_result = session.result is not None
        state.segments = [{"name": row.name, "color": row.color, "volume": f"{row.volume_ml:.2f}",
                           "quality": "" if row.quality is None else f"{row.quality:.3f}"} for row in session.result_rows]
        if session.result is not None:
            stem = f"{session.reference_volume.GetName()}_{session.result_entry.method}"
            state.download_names = {fmt: f"{stem}.{fmt}" for fmt in DOWNLOAD_FORMATS}

    # -- loading ----------------------------------------------------------------------------

    def _volumes_loaded(self, nodes) -> None:
        self.state.volume_items = [{"title": node.GetName(), "value": node_id}
                                   for node_id, node in self.session.volumes.items()]
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(nodes[-1])
        display.reset_views()
        self._model_changed(keep_inputs=True)

    def _load_paths(self, named_paths) -> None:
        """Load files, all or none: a bad file leaves the scene and the lists as they were."""
        self.state.load_message, self.state.load_note = "", ""
        loaded, notes = [], []
        try:
            for path, name in named_paths:
                loaded.append(self.session.load(path, name))
                notes.append(self.session.load_note)
        except InputVolumeError as error:
            for node in loaded:
                self.session.volumes.pop(node.GetID(), None)
                self.slicer_app.scene.RemoveNode(node)
            self.state.load_message = str(error)
            return
        self.state.load_note = "\n".join(note for note in notes if note)
        if loaded:
            self._volumes_loaded(loaded)

    def load_uploads(self, files) -> None:
        """Files uploaded from the browser (``VFileInput`` change event)."""
        if not files or self.session.panel.active:
            return
        with tempfile.TemporaryDirectory() as folder:
            paths = []
            for index, file in enumerate(files if isinstance(files, list) else [files]):
                upload = ClientFile(file)
                # The file's own name only: a name with folders (a crafted request) cannot leave the folder.
                name = Path(upload.name).name or f"upload_{index}"
                path = Path(folder) / f"{index}" / name
                path.parent.mkdir()
                path.write_bytes(upload.content)
                paths.append(path)
            self._load_paths([(path, None) for path in paths])
            # name the user's file, not the server's temporary folder
            for index in range(len(paths)):
                prefix = f"{folder}{os.sep}{index}{os.sep}"
                self.state.load_message = self.state.load_message.replace(prefix, "")
                self.state.load_note = self.state.load_note.replace(prefix, "")

    def load_data_file(self) -> None:
        """The picked server-side file (only names listed from --data are accepted)."""
        name = self.state.data_file
        if not name or name not in self.state.data_files or self.session.panel.active:
            return
        path = self.data_dir / name
        from EfficientSegmentationCommon.scene import name_from_path

        parent = Path(name).parent.name
        self._load_paths([(path, f"{parent}_{name_from_path(name)}" if parent else None)])

    # -- running ----------------------------------------------------------------------------

    def segment_or_cancel(self) -> None:
        panel = self.session.panel
        if panel.active:
            self.session.cancel()
            self._sync_panel()
            return
        entry = self._entry()
        if entry is None:
            return
        self.session.start(entry, self._input_ids(), settings_from_page(entry, self._settings()))
        self._sync_panel()
        if self.session.panel.active:
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            state = self.session.poll()
            with self.state:
                self._sync_panel()
                if not state.active:
                    self._sync_result()
                    self._show_result()
            if not state.active:
                return

    def _show_result(self) -> None:
        result = self.session.result
        if result is None:
            return
        segmentation = result.segmentation
        segmentation.CreateDefaultDisplayNodes()
        segmentation.CreateClosedSurfaceRepresentation()
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(self.session.reference_volume)
        display.reset_views()

    def download(self, fmt: str):
        """The result file's bytes as a trame attachment, for ``utils.download`` in the page."""
        _, data = self.session.download(fmt)
        return self.server.protocol.addAttachment(data)

    def reset(self) -> None:
        """The user left: stop the run and forget everything they loaded."""
        self.session.reset()
        with self.state:
            self._reset_state()

    # -- server -----------------------------------------------------------------------------

    def _bind(self, web_server) -> None:
        """One session at a time: the busy page at '/', and a second websocket closed."""
        from aiohttp import web

        async def root(request):
            if self.gate.owner is not None:
                return web.Response(text=BUSY_PAGE, content_type="text/html", status=503)
            raise web.HTTPFound("index.html")

        # wslink adds its own '/' (a redirect to index.html) on start; this one replaces it.
        web_server._default_routes = [route for route in web_server._default_routes
                                      if not (isinstance(route, web.RouteDef) and route.path == "/")]
        web_server.app.router.add_get("/", root)
        protocol = self.server.protocol
        protocol.onConnect = lambda request, client_id: self.gate.connected(self._ws_handler(web_server), client_id)
        protocol.onClose = self.gate.closed

    @staticmethod
    def _ws_handler(web_server):
        return web_server._ws_handlers[0]

    # -- page -------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        state, ctrl = self.state, self.server.controller
        state.change("model_id")(self._model_changed)
        state.change("input_0", "input_1", *SETTING_KEYS)(self._inputs_changed)
        upload = ctrl.trigger_name(self.load_uploads)
        download = ctrl.trigger_name(self.download)
        with SinglePageWithDrawerLayout(self.server, width=380) as layout:
            self.ui = layout
            layout.title.set_text("EfficientSegmentation: AI segmentation on a CPU")
            with layout.drawer, html.Div(classes="pa-3 d-flex flex-column ga-2"):
                html.Div("1. Load a volume (NIfTI, NRRD or a zipped DICOM series)", classes="text-subtitle-2")
                v3.VFileInput(id="upload", label="Upload image files or a DICOM .zip", multiple=True,
                              density="compact", accept=".nii,.gz,.nrrd,.nhdr,.mha,.mhd,.zip", disabled=("running",),
                              hide_details=True, change=f"trigger('{upload}', [$event.target.files])",
                              title=f"A .zip holds one DICOM series, one file per slice, at most "
                                    f"{MAX_UNPACKED_BYTES / 1024 ** 3:g} GiB unpacked")
                with html.Div(v_if="data_files.length", classes="d-flex ga-1"):
                    v3.VSelect(id="data-file", label="Or pick a file of this server", items=("data_files",),
                               v_model=("data_file",), density="compact", hide_details=True, disabled=("running",))
                    v3.VBtn("Load", id="load-data-file", click=self.load_data_file, disabled=("running || !data_file",))
                v3.VAlert(id="load-message", v_if="load_message", type="error", density="compact", text=("load_message",))
                v3.VAlert(id="load-note", v_if="load_note", type="info", density="compact", text=("load_note",),
                          variant="tonal")
                html.Div("2. Model and inputs", classes="text-subtitle-2 mt-2")
                v3.VSelect(id="model", label="Model", items=("model_items",), v_model=("model_id",), density="compact",
                           hide_details=True, disabled=("!settings_enabled",))
                with html.Details(classes="text-caption"):
                    html.Summary("About this model")
                    html.Div("{{ model_description }}")
                for index in range(2):
                    v3.VSelect(id=f"input-{index}", v_if=f"model_inputs.length > {index}",
                               label=(f"model_inputs[{index}] + ' volume'",), items=("volume_items",),
                               v_model=(f"input_{index}",), density="compact", hide_details=True,
                               disabled=("!settings_enabled",))
                html.Div("3. Settings", classes="text-subtitle-2 mt-2")
                with html.Div(v_if="method == 'mednca'"):
                    self._slider(MedNCASettings, "runs", "Stochastic runs (more: steadier, quality score; slower)", 1)
                    v3.VCheckbox(id="trained-steps", label="Trained steps", v_model=("trained_steps",),
                                 density="compact", hide_details=True, disabled=("!settings_enabled",))
                    with html.Div(v_if="!trained_steps"):
                        self._slider(MedNCASettings, "global_steps", "Global steps", 1)
                        self._slider(MedNCASettings, "refinement_steps", "Refinement steps", 1)
                    v3.VCheckbox(id="preview", label="Live preview (watch the segmentation grow)",
                                 v_model=("preview",), title=setting_help(MedNCASettings, "preview"),
                                 density="compact", hide_details=True, disabled=("!settings_enabled",))
                with html.Div(v_if="method == 'ossnet'"):
                    self._slider(OSSNetSettings, "resolution", "Output resolution (x the input's)", 0.25)
                    html.Div("{{ resolution_text }}", id="resolution-text", classes="text-caption")
                v3.VBtn("{{ button_text }}", id="segment", color=("running ? 'warning' : 'primary'",), block=True,
                        disabled=("!button_enabled",), click=self.segment_or_cancel, classes="mt-2")
                html.Div("{{ status_text }}", id="status-text", v_if="status_text", classes="text-caption text-medium-emphasis")
                with html.Div(v_if="progress_visible"):
                    v3.VProgressLinear(id="progress", model_value=("progress_percent",), height=8, color="primary")
                    html.Div("{{ progress_text }} ({{ progress_percent }}%)", id="progress-text", classes="text-caption")
                v3.VAlert(id="result-text", v_if="result_text", text=("result_text",), density="compact",
                          type=("result_color",), style="white-space: pre-line", variant="tonal")
                with html.Div(v_if="has_result", id="result", classes="d-flex flex-column ga-1"):
                    with html.Table(classes="text-body-2", id="segments"):
                        with html.Tr():
                            html.Th("Segment", style="text-align: left")
                            html.Th("Volume (mL)")
                            html.Th("NQM", v_if="segments.some(s => s.quality)", title="quality score: lower is better")
                        with html.Tr(v_for="s in segments", key="s.name", classes="segment-row"):
                            with html.Td():
                                html.Span(style=("{background: s.color, display: 'inline-block', width: '12px', "
                                                 "height: '12px', marginRight: '6px', borderRadius: '2px'}",))
                                html.Span("{{ s.name }}", classes="segment-name")
                            html.Td("{{ s.volume }}", style="text-align: right")
                            html.Td("{{ s.quality }}", classes="segment-quality", style="text-align: right",
                                    v_if="segments.some(s => s.quality)")
                    for fmt, text in (("seg.nrrd", "Download .seg.nrrd"), ("nii.gz", "Download NIfTI label map")):
                        v3.VBtn(text, id=f"download-{fmt.replace('.', '-')}", variant="outlined", block=True,
                                prepend_icon="mdi-download", disabled=("running",),
                                click=(f"utils.download(download_names['{fmt}'], trigger('{download}', ['{fmt}']), "
                                       "'application/octet-stream')"))
            with layout.content:
                with html.Div(style="height: calc(100vh - 64px); position: relative;"):
                    self.layout_manager.initialize_layout_grid(layout)

    def _slider(self, settings_class: type, name: str, label: str, step: float) -> AbstractElement:
        """A slider with a number field beside it, over the setting's declared range."""
        low, high = slider_range(settings_class, name)
        low = low if low is not None else 0
        high = high if high is not None else 100
        html.Div(label, classes="text-caption mt-1")
        with html.Div(classes="d-flex align-center ga-2"):
            v3.VSlider(v_model=(name,), min=low, max=high, step=step, density="compact", hide_details=True,
                       disabled=("!settings_enabled",), classes="flex-grow-1")
            return v3.VTextField(id=f"{name.replace('_', '-')}-field", v_model=(name,), type="number", min=low, max=high,
                                 step=step, density="compact", hide_details=True, style="max-width: 80px",
                                 disabled=("!settings_enabled",))


def main(argv: list[str] | None = None) -> int:
    """``efficientseg-web``: start the web app on HOST:PORT (default 127.0.0.1:8080)."""
    parser = argparse.ArgumentParser(prog="efficientseg-web", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0: the network)")
    parser.add_argument("--data", type=Path, help="folder of image files the page may load from the server")
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder")
    if _MISSING is not None:
        print(f"efficientseg-web needs the web dependencies: pip install -e '.[web]' ({_MISSING})", file=sys.stderr)
        return 2
    from trame.app import get_server

    if not os.environ.get("DISPLAY"):  # no X server: render the views off screen (Mesa's EGL)
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

    server = get_server("efficientseg-web", client_type="vue3")
    server.cli.set_defaults(port=args.port, host=args.host)
    app = SegmentationWebApp(server, data_dir=args.data)
    sys.argv = sys.argv[:1]  # trame parses sys.argv too; the options above are ours
    app.server.start(port=args.port, host=args.host, open_browser=False, timeout=0, show_connection_info=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
