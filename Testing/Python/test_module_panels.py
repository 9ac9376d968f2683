"""Both module panels, checked without Slicer's GUI: the .ui files against the code that uses them,
and the module files against Slicer's scripted-module conventions.

Slicer's Qt widgets cannot run here. So: every ``self.ui.<name>`` the widget code uses (the
module file and the shared ``segment_widget``) exists in the module's .ui with the class the
code expects; every widget bound by ``SlicerParameterName`` matches a parameter node field of a
type Slicer's parameterNodeWrapper can bind to it (guiConnectors.py); the module file follows
the scripted-module template, delegates to its library logic and imports no torch at load time.
The panels' behaviour itself (state machine, module rules) is tested in test_mednca_panel.py and
test_ossnet_panel.py.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO_ROOT

COMMON = REPO_ROOT / "Resources" / "Python" / "EfficientSegmentationCommon"
# Widgets the shared running part (segment_widget.py) needs in every module's .ui.
SHARED_WIDGETS = {
    "inputsCollapsibleButton": "ctkCollapsibleButton",
    "settingsCollapsibleButton": "ctkCollapsibleButton",
    "modelComboBox": "QComboBox",
    "outputSelector": "qMRMLNodeComboBox",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "deviceComboBox": "QComboBox",
    "segmentButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "resultLabel": "QLabel",
}
# Fields whose widgets are filled at run time (registry, GPU) and synced by hand, not by SlicerParameterName.
HAND_SYNCED_FIELDS = {"model": "modelComboBox", "device": "deviceComboBox"}


@dataclass(frozen=True)
class Panel:
    """What is particular to one module's panel."""

    module: str
    widgets: dict[str, str]  # widget name -> class, besides SHARED_WIDGETS
    selectors: dict[str, tuple[str, bool, bool]]  # node combo box -> (node type, none enabled, add enabled)
    sliders: list[str]
    whole_number_sliders: list[str]
    advanced: set[str]  # widgets inside the collapsed Advanced section
    slider_words: dict[str, tuple[str, ...]] = field(default_factory=dict)  # words a slider's tooltip must use
    settings: str = ""  # "<package>.settings:<class>": the settings class the parameter node inherits fields from

    @property
    def file(self) -> Path:
        return REPO_ROOT / self.module / f"{self.module}.py"

    @property
    def ui_file(self) -> Path:
        return REPO_ROOT / self.module / "Resources" / "UI" / f"{self.module}.ui"

    @property
    def expected_classes(self) -> dict[str, str]:
        return {**SHARED_WIDGETS, **self.widgets}


PANELS = [
    Panel("MedNCASegment",
          widgets={"inputSelector": "qMRMLNodeComboBox", "roiSelector": "qMRMLNodeComboBox",
                   "uncertaintyCheckBox": "QCheckBox", "trainedSettingsCheckBox": "QCheckBox",
                   "globalStepsSlider": "ctkSliderWidget", "refinementStepsSlider": "ctkSliderWidget",
                   "downscaleSlider": "ctkSliderWidget", "runsSlider": "ctkSliderWidget", "seedSpinBox": "QSpinBox",
                   "modeComboBox": "QComboBox", "leftBoxSelector": "qMRMLNodeComboBox",
                   "rightBoxSelector": "qMRMLNodeComboBox"},
          selectors={"inputSelector": ("vtkMRMLScalarVolumeNode", False, False),
                     "roiSelector": ("vtkMRMLMarkupsROINode", True, True),
                     "outputSelector": ("vtkMRMLSegmentationNode", True, True),
                     "leftBoxSelector": ("vtkMRMLMarkupsROINode", True, False),
                     "rightBoxSelector": ("vtkMRMLMarkupsROINode", True, False)},
          sliders=["globalStepsSlider", "refinementStepsSlider", "downscaleSlider", "runsSlider"],
          whole_number_sliders=["globalStepsSlider", "refinementStepsSlider", "downscaleSlider", "runsSlider"],
          advanced={"deviceComboBox", "seedSpinBox"},
          slider_words={"runsSlider": ("mean", "quality score", "proportion")},
          settings="MedNCASegmentLib.settings:MedNCASettings"),
    Panel("OSSNetSegment",
          widgets={"firstInputLabel": "QLabel", "firstInputSelector": "qMRMLNodeComboBox",
                   "secondInputLabel": "QLabel", "secondInputSelector": "qMRMLNodeComboBox",
                   "roiSelector": "qMRMLNodeComboBox", "resolutionSlider": "ctkSliderWidget", "gridLabel": "QLabel",
                   "chunkSizeSlider": "ctkSliderWidget"},
          selectors={"firstInputSelector": ("vtkMRMLScalarVolumeNode", False, False),
                     "secondInputSelector": ("vtkMRMLScalarVolumeNode", False, False),
                     "roiSelector": ("vtkMRMLMarkupsROINode", True, True),
                     "outputSelector": ("vtkMRMLSegmentationNode", True, True)},
          sliders=["resolutionSlider", "chunkSizeSlider"],
          whole_number_sliders=["chunkSizeSlider"],
          advanced={"deviceComboBox", "chunkSizeSlider"},
          slider_words={"resolutionSlider": ("finer", "memory", "time"), "chunkSizeSlider": ("memory", "same")},
          settings="OSSNetSegmentLib.settings:OSSNetSettings"),
]
pytestmark = pytest.mark.parametrize("panel", PANELS, ids=lambda p: p.module)


# -- reading the .ui and the module source ----------------------------------------------------


def ui_root(panel: Panel) -> ElementTree.Element:
    return ElementTree.parse(panel.ui_file).getroot()


def ui_widgets(panel: Panel) -> dict[str, ElementTree.Element]:
    return {widget.get("name"): widget for widget in ui_root(panel).iter("widget")}


def own_property(widget: ElementTree.Element, name: str):
    """A property set directly on ``widget`` (not on its children), as Python value, or None."""
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            value = prop[0]
            if value.tag == "bool":
                return value.text == "true"
            if value.tag in ("number", "double"):
                return float(value.text)
            if value.tag == "stringlist":
                return [item.text for item in value.findall("string")]
            return value.text
    return None


def module_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def module_class(panel: Panel, name: str) -> ast.ClassDef:
    return next(node for node in module_tree(panel.file).body if isinstance(node, ast.ClassDef) and node.name == name)


@dataclass(frozen=True)
class ParameterField:
    """A parameter node field as the parameterNodeWrapper sees it."""

    kind: str  # "float", "int", "bool", "str" or a node class name
    default: object
    bounds: tuple[float, float] | None  # WithinRange, if annotated with it


def settings_class(panel: Panel) -> type:
    import importlib

    module, name = panel.settings.split(":")
    return getattr(importlib.import_module(module), name)


def parameter_fields(panel: Panel) -> dict[str, ParameterField]:
    """Fields of the parameterNodeWrapper class: its own (read from the source) and those it
    inherits from ``settingsParameters(<settings class>)`` (segment_widget.py), which makes one
    per panel option of the settings class, ``Annotated[float, WithinRange(low, high)]`` where
    the option has a range."""
    from EfficientSegmentationCommon.settings import parameter_fields as settings_parameter_fields

    cls = module_class(panel, f"{panel.module}ParameterNode")
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in cls.decorator_list)
    fields = {}
    bases = [ast.unparse(b) for b in cls.bases]
    if bases:
        assert bases == [f"settingsParameters({settings_class(panel).__name__})"], bases
        for name, kind, default, (low, high) in settings_parameter_fields(settings_class(panel)):
            bounded = kind is float and low is not None and high is not None
            fields[name] = ParameterField(kind.__name__, default, (low, high) if bounded else None)
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign):
            continue
        annotation, bounds = node.annotation, None
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
            base, *extras = annotation.slice.elts
            within = next(e for e in extras if isinstance(e, ast.Call) and ast.unparse(e.func) == "WithinRange")
            bounds = tuple(ast.literal_eval(arg) for arg in within.args)
            annotation = base
        default = ast.literal_eval(node.value) if node.value is not None else None
        fields[node.target.id] = ParameterField(ast.unparse(annotation), default, bounds)
    return fields


def settings_bounds(panel: Panel, field_name: str) -> tuple[float, float]:
    """The range of a settings option, by its parameter (camelCase) name."""
    import dataclasses

    from EfficientSegmentationCommon.settings import camel_case

    option = next(f for f in dataclasses.fields(settings_class(panel)) if camel_case(f.name) == field_name)
    return option.metadata["range"]


def ui_attributes_used(path: Path) -> set[str]:
    """Names ``X`` of every ``self.ui.X`` in a source file."""
    return {
        node.attr
        for node in ast.walk(module_tree(path))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
    }


def bound_widgets(panel: Panel) -> dict[str, str]:
    """Widget name -> SlicerParameterName, for every bound widget."""
    return {name: own_property(widget, "SlicerParameterName")
            for name, widget in ui_widgets(panel).items() if own_property(widget, "SlicerParameterName")}


# -- the .ui against the code -----------------------------------------------------------------


def test_every_widget_the_code_uses_exists_with_the_expected_class(panel):
    widgets = ui_widgets(panel)
    shared = ui_attributes_used(COMMON / "segment_widget.py")
    used = ui_attributes_used(panel.file) | shared
    assert shared <= set(SHARED_WIDGETS), f"segment_widget.py uses {shared - set(SHARED_WIDGETS)}: add them to SHARED_WIDGETS"
    expected = panel.expected_classes
    assert used <= set(expected), f"widgets used without an expected class: {used - set(expected)}"
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is used by the widget code but missing from {panel.ui_file.name}"
        assert widgets[name].get("class") == expected[name], name
    # every custom widget class used in the .ui is declared, so Designer and QUiLoader know it
    declared = {c.find("class").text for c in ui_root(panel).iter("customwidget")}
    classes = {widget.get("class") for widget in widgets.values()}
    assert {c for c in classes if not c.startswith("Q")} <= declared


def test_the_ui_root_is_a_qmrmlwidget_that_passes_the_scene_to_every_node_selector(panel):
    root = ui_root(panel)
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and root.find("class").text == panel.module
    selectors = {name for name, w in ui_widgets(panel).items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)" and c.find("sender").text == panel.module}
    assert selectors == connected == set(panel.selectors)


def test_node_selectors(panel):
    widgets = ui_widgets(panel)
    for name, (node_type, none_enabled, add_enabled) in panel.selectors.items():
        widget = widgets[name]
        assert own_property(widget, "nodeTypes") == [node_type], name
        assert bool(own_property(widget, "noneEnabled")) == none_enabled, name
        assert bool(own_property(widget, "addEnabled")) == add_enabled, name
        if none_enabled:
            assert own_property(widget, "noneDisplay"), name  # "Whole volume" / "Create new segmentation"


def test_bound_widgets_match_parameter_node_fields_of_a_bindable_type(panel):
    """What Slicer's parameterNodeWrapper GUI connectors accept (guiConnectors.py): node combo
    boxes a node field of their node type, ctkSliderWidget only a bounded float, QCheckBox a
    bool, QSpinBox an int."""
    fields = parameter_fields(panel)
    widgets = ui_widgets(panel)
    bound = bound_widgets(panel)
    assert len(set(bound.values())) == len(bound), "two widgets bound to one field"
    for widget_name, field_name in bound.items():
        assert field_name in fields, f"{widget_name} is bound to '{field_name}', which the parameter node does not have"
        parameter = fields[field_name]
        widget = widgets[widget_name]
        kind = widget.get("class")
        if kind == "qMRMLNodeComboBox":
            assert own_property(widget, "nodeTypes") == [parameter.kind], widget_name
            assert parameter.default is None, "node fields default to None"
        elif kind == "ctkSliderWidget":
            assert parameter.kind == "float", f"{field_name}: ctkSliderWidget binds only float fields"
            assert parameter.bounds is not None, f"{field_name}: a slider's field needs WithinRange"
            low, high = parameter.bounds
            assert (own_property(widget, "minimum"), own_property(widget, "maximum")) == (low, high), field_name
            assert low <= parameter.default <= high, field_name
            assert own_property(widget, "value") == parameter.default, field_name
            if widget_name in panel.whole_number_sliders:
                assert own_property(widget, "decimals") == 0, f"{widget_name} holds whole numbers"
        elif kind == "QCheckBox":
            assert parameter.kind == "bool", field_name
        elif kind == "QComboBox":  # QComboBoxToStringableConnector: needs the Choice annotation
            from EfficientSegmentationCommon.settings import option_choices

            assert parameter.kind == "str", field_name
            assert field_name in option_choices(settings_class(panel)), f"{field_name}: a bound combo box needs choices"
            assert parameter.default in option_choices(settings_class(panel))[field_name], field_name
        elif kind == "QSpinBox":
            assert parameter.kind == "int", field_name
            if parameter.bounds is None and field_name in ("seed",):
                low, high = settings_bounds(panel, field_name)
                assert (own_property(widget, "minimum") or 0, own_property(widget, "maximum")) == (low, high), field_name
        else:
            pytest.fail(f"{widget_name}: no parameterNodeWrapper connector for {kind}")
    unbound = set(fields) - set(bound.values())
    assert unbound == set(HAND_SYNCED_FIELDS), f"fields without a widget: {unbound - set(HAND_SYNCED_FIELDS)}"


def test_hand_synced_fields_are_written_from_their_combo_boxes(panel):
    shared = (COMMON / "segment_widget.py").read_text()
    widgets = ui_widgets(panel)
    for field_name, widget_name in HAND_SYNCED_FIELDS.items():
        assert widgets[widget_name].get("class") == "QComboBox"
        assert own_property(widgets[widget_name], "SlicerParameterName") is None
        assert f"self._parameterNode.{field_name} = self.ui.{widget_name}.itemData(index)" in shared
        assert f"self.ui.{widget_name}, node.{field_name}" in shared  # and shown from the parameter node
    assert "self._syncComboBoxes(node)" in panel.file.read_text()


def test_sliders_have_tooltips_saying_what_they_trade(panel):
    for slider in panel.sliders:
        tooltip = own_property(ui_widgets(panel)[slider], "toolTip") or ""
        assert len(tooltip) > 80, f"{slider} needs a tooltip explaining the trade-off"
        lowered = tooltip.lower()
        assert any(word in lowered for word in ("faster", "slower", "time")), tooltip
        assert any(word in lowered for word in ("more ", "larger", "fewer", "smaller", "finer")), tooltip
        for word in panel.slider_words.get(slider, ()):
            assert word in lowered, f"{slider}: the tooltip should mention '{word}'"


def test_advanced_settings_are_in_a_collapsed_section(panel):
    advanced = ui_widgets(panel)["advancedCollapsibleButton"]
    assert own_property(advanced, "collapsed") is True
    assert panel.advanced <= {w.get("name") for w in advanced.iter("widget")}


def test_segment_button_starts_disabled_and_every_input_has_a_tooltip(panel):
    widgets = ui_widgets(panel)
    assert own_property(widgets["segmentButton"], "text") == "Segment"
    assert own_property(widgets["segmentButton"], "enabled") is False
    for name, widget in widgets.items():
        if widget.get("class") in ("qMRMLNodeComboBox", "QComboBox", "QCheckBox", "ctkSliderWidget", "QSpinBox"):
            assert own_property(widget, "toolTip"), f"{name} has no tooltip"


# -- module structure: Slicer's scripted-module template, no torch at load ------------------


def test_module_follows_the_scripted_module_template(panel):
    module = panel.module
    classes = {node.name: node for node in module_tree(panel.file).body if isinstance(node, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in node.bases] for name, node in classes.items()}
    assert bases[module] == ["ScriptedLoadableModule"]
    assert bases[f"{module}Widget"] == ["SegmentWidgetMixin", "ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases[f"{module}Logic"] == ["LibraryLogicMixin", "ScriptedLoadableModuleLogic"]
    assert bases[f"{module}Test"] == ["ScriptedLoadableModuleTest"]
    methods = {name: {f.name for f in node.body if isinstance(f, ast.FunctionDef)} for name, node in classes.items()}
    # The template's lifecycle (setup, cleanup, enter, exit, scene close, parameter node binding) is
    # the shared mixin's; the module widget gives what differs.
    assert {"_createLogic", "initializeParameterNode", "_checkCanApply", "_prepareJob", "_runSummary",
            "_showResult"} <= methods[f"{module}Widget"]
    shared_tree = module_tree(COMMON / "segment_widget.py")
    mixin = next(n for n in shared_tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentWidgetMixin")
    mixin_methods = {f.name for f in mixin.body if isinstance(f, ast.FunctionDef)}
    assert {"__init__", "setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
            "setParameterNode"} <= mixin_methods
    assert not {"setup", "cleanup", "enter", "exit", "setParameterNode"} & methods[f"{module}Widget"], \
        "the lifecycle is the mixin's alone"
    logic_source = ast.unparse(classes[f"{module}Logic"])
    assert f"PARAMETER_NODE_CLASS = {module}ParameterNode" in logic_source
    assert {"setUp", "runTest"} <= methods[f"{module}Test"]
    source = panel.file.read_text()
    shared = (COMMON / "segment_widget.py").read_text()
    assert f'UI_FILE = "UI/{module}.ui"' in source and "slicer.util.loadUI(self.resourcePath(self.UI_FILE))" in shared
    assert "self._parameterNode.connectGui(self.ui)" in shared
    assert "self._parameterNode.disconnectGui(self._parameterNodeGuiTag)" in shared
    assert "self.initializeRunning()" in shared and "self.setupRunning()" in shared and "self.cleanupRunning()" in shared


def test_the_logic_delegates_to_the_library_logic_imported_lazily(panel):
    import importlib

    logic = ast.unparse(module_class(panel, f"{panel.module}Logic"))
    library_logic = f"{panel.module}Lib.logic.{panel.module}Logic"
    assert f"IMPLEMENTATION = '{library_logic}'" in logic
    module, name = library_logic.rsplit(".", 1)
    assert hasattr(importlib.import_module(module), name)  # the path names a real class
    top_level = {node.module for node in module_tree(panel.file).body if isinstance(node, ast.ImportFrom)}
    assert f"{panel.module}Lib.logic" not in top_level


def test_the_shared_widget_runs_the_work_in_a_background_job_polled_by_a_timer(panel):
    shared = (COMMON / "segment_widget.py").read_text()
    assert "BackgroundJob()" in shared and "qt.QTimer()" in shared and "self._job.poll()" in shared
    assert "self._prepareJob()" in shared and "logic.compute(" in shared and "self.logic.finish(" in shared
    assert "self.logic.prepare(" in ast.unparse(module_class(panel, f"{panel.module}Widget"))


def top_level_imports(path: Path) -> set[str]:
    """Top-level package names imported when ``path`` is loaded (function bodies excluded)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try, ast.With)) else [node]:
            if isinstance(sub, ast.Import):
                names |= {alias.name.split(".")[0] for alias in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                names.add(sub.module.split(".")[0])
    return names


def test_no_torch_import_when_slicer_loads_the_module(panel):
    """Slicer imports every module file at start-up; torch comes only with a run."""
    for path in (panel.file, REPO_ROOT / panel.module / f"{panel.module}Lib" / "panel.py",
                 COMMON / "panel_state.py", COMMON / "segment_widget.py", COMMON / "module_logic.py",
                 COMMON / "torch_setup.py"):
        assert "torch" not in top_level_imports(path), path.name
