"""BUILD must cover every module and test file (Bazel itself cannot run offline here)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _targets():
    """Evaluates BUILD's target calls with recording stand-ins for the Bazel rules."""
    targets = []

    def rule(kind):
        def record(**kwargs):
            targets.append((kind, kwargs))
        return record

    namespace = {
        "load": lambda *args: None,
        "package": lambda **kwargs: None,
        "py_library": rule("py_library"),
        "py_binary": rule("py_binary"),
        "py_test": rule("py_test"),
    }
    source = (ROOT / "BUILD").read_text()
    ast.parse(source)  # Starlark syntax is a subset of Python's
    exec(compile(source, "BUILD", "exec"), namespace)
    return targets


def _srcs(targets, kind):
    return {src for k, t in targets if k == kind for src in t["srcs"]}


def test_every_module_is_in_the_library():
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "tfqat").rglob("*.py")}
    missing = modules - _srcs(_targets(), "py_library")
    assert not missing, f"add to py_library 'tfqat' in BUILD: {sorted(missing)}"


def test_every_test_file_has_a_py_test():
    tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}
    missing = tests - _srcs(_targets(), "py_test")
    assert not missing, f"add a py_test to BUILD for: {sorted(missing)}"


def test_every_test_helper_is_in_test_support():
    helpers = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("*.py")
               if not p.name.startswith("test_")}
    assert helpers <= _srcs(_targets(), "py_library")


def test_every_listed_file_exists_and_names_are_unique():
    targets = _targets()
    for kind, target in targets:
        for src in [*target["srcs"], *target.get("data", [])]:
            assert (ROOT / src).is_file(), f"BUILD {kind} '{target['name']}' lists missing {src}"
    names = [t["name"] for _, t in targets]
    assert len(names) == len(set(names))
