"""The Slicer extension's own files, checked without Slicer: .ui panels, CMake lists, metadata,
icons, and that loading a module never imports torch (Slicer starts without it)."""

from __future__ import annotations

import ast
import json
import re
import struct
from pathlib import Path

import pytest
from conftest import REPO_ROOT

MODULES = ["MedNCASegment", "OSSNetSegment"]
PACKAGES = {
    "EfficientSegmentationCommon": REPO_ROOT / "Resources" / "Python" / "EfficientSegmentationCommon",
    "MedNCASegmentLib": REPO_ROOT / "MedNCASegment" / "MedNCASegmentLib",
    "OSSNetSegmentLib": REPO_ROOT / "OSSNetSegment" / "OSSNetSegmentLib",
}


def cmake_list(path: Path, variable: str, substitutions: dict[str, str] | None = None) -> set[str]:
    """Entries of ``set(variable ...)`` in a CMakeLists.txt, with ``${NAME}`` substituted."""
    match = re.search(rf"set\({variable}\s+(.*?)\)", path.read_text(), re.S)
    assert match, f"{path} has no set({variable} ...)"
    entries = match.group(1).split()
    for name, value in (substitutions or {}).items():
        entries = [entry.replace(f"${{{name}}}", value) for entry in entries]
    return set(entries)


def cmake_variables(path: Path) -> dict[str, str]:
    """``set(NAME "value")`` pairs of a CMakeLists.txt."""
    return dict(re.findall(r'^set\((EXTENSION_\w+) "(.*?)"\)', path.read_text(), re.M))


def resource_files(module_folder: Path) -> set[str]:
    """Every file under ``<module>/Resources``, relative to the module folder."""
    return {
        path.relative_to(module_folder).as_posix()
        for path in (module_folder / "Resources").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def module_level_imports(path: Path, package: str | None) -> set[str]:
    """Modules imported when ``path`` is imported (function bodies are not run at import)."""
    names = set()
    tree = ast.parse(path.read_text())
    statements = [sub for node in tree.body for sub in (ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node])]
    for node in statements:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = f"{package}.{node.module}" if node.level and node.module else package if node.level else node.module
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def source_file(module_name: str) -> Path | None:
    """Our own source file for a dotted module name, or None for third-party modules."""
    top, *rest = module_name.split(".")
    if top not in PACKAGES:
        return None
    path = PACKAGES[top].joinpath(*rest)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


@pytest.mark.parametrize("module", MODULES)
def test_loading_a_module_does_not_import_torch(module):
    pending = [(REPO_ROOT / module / f"{module}.py", None, module)]
    seen = set()
    while pending:
        path, package, chain = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in module_level_imports(path, package):
            assert name.split(".")[0] != "torch", f"torch imported at load time: {chain} -> {name}"
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                target = source_file(".".join(parts[:depth]))
                if target:
                    target_package = ".".join(parts[:depth] if target.name == "__init__.py" else parts[: depth - 1])
                    pending.append((target, target_package, f"{chain} -> {'.'.join(parts[:depth])}"))


@pytest.mark.parametrize("module", MODULES)
def test_module_cmakelists_lists_every_script_and_resource(module):
    folder = REPO_ROOT / module
    cmake = folder / "CMakeLists.txt"
    scripts = cmake_list(cmake, "MODULE_PYTHON_SCRIPTS", {"MODULE_NAME": module})
    on_disk = {f"{module}.py"} | {f"{module}Lib/{path.name}" for path in (folder / f"{module}Lib").glob("*.py")}
    assert scripts == on_disk
    resources = cmake_list(cmake, "MODULE_PYTHON_RESOURCES", {"MODULE_NAME": module})
    assert resources == resource_files(folder)
    text = cmake.read_text()
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_shared_package_cmakelists_lists_every_script():
    listed = cmake_list(REPO_ROOT / "Resources" / "CMakeLists.txt", "EfficientSegmentationCommon_PYTHON_SCRIPTS")
    package = PACKAGES["EfficientSegmentationCommon"]
    assert listed == {f"EfficientSegmentationCommon/{path.name}" for path in package.glob("*.py")}


def test_model_registry_is_installed_and_every_model_ships_with_its_card():
    """Models.json and its schema are installed beside the modules, and each registered model's
    weights and card are in its module's folder and listed for installation."""
    installed = cmake_list(REPO_ROOT / "Resources" / "CMakeLists.txt", "EfficientSegmentationRegistry_FILES")
    assert installed == {"Models.json", "Models.schema.json"}
    registry = json.loads((REPO_ROOT / "Resources" / "Models.json").read_text())
    schema = json.loads((REPO_ROOT / "Resources" / "Models.schema.json").read_text())
    required = set(schema["properties"]["models"]["items"]["required"])
    for model in registry["models"]:
        assert required <= set(model), model["id"]
        module = model["module"]
        resources = cmake_list(REPO_ROOT / module / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES", {"MODULE_NAME": module})
        for file in (model["file"], model["card"], str(Path(model["file"]).with_suffix(".json"))):
            assert (REPO_ROOT / module / "Resources" / file).is_file(), file
            assert f"Resources/{file}" in resources, file


def test_extension_metadata_agrees_everywhere():
    cmake = cmake_variables(REPO_ROOT / "CMakeLists.txt")
    s4ext = {}
    for line in (REPO_ROOT / "extension.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            s4ext[key] = value.strip()
    assert cmake["EXTENSION_CATEGORY"] == s4ext["category"] == "Segmentation"
    assert cmake["EXTENSION_DEPENDS"] == s4ext["depends"] == "PyTorch"
    for field, key in [("HOMEPAGE", "homepage"), ("CONTRIBUTORS", "contributors"), ("ICONURL", "iconurl"),
                       ("DESCRIPTION", "description"), ("SCREENSHOTURLS", "screenshoturls")]:
        assert cmake[f"EXTENSION_{field}"] == s4ext[key], field
    catalog = json.loads((REPO_ROOT / "EfficientSegmentation.json").read_text())
    assert catalog["category"] == s4ext["category"]
    assert catalog["build_dependencies"] == s4ext["depends"].split()
    assert (catalog["scm_url"], catalog["scm_revision"]) == (s4ext["scmurl"], s4ext["scmrevision"])
    top_level = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert "project(EfficientSegmentation)" in top_level
    for subdirectory in ["Resources", *MODULES]:
        assert f"add_subdirectory({subdirectory})" in top_level


@pytest.mark.parametrize(
    "icon",
    ["Resources/Icons/EfficientSegmentation.png", *(f"{m}/Resources/Icons/{m}.png" for m in MODULES)],
)
def test_icons_are_128_pixel_pngs(icon):
    header = (REPO_ROOT / icon).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    assert struct.unpack(">II", header[16:24]) == (128, 128)
