import pytest

from graphpress.errors import SpecError
from graphpress.passes import build_passes, parse_spec
from graphpress.passes.cleanup import Cleanup, FoldConstants


def test_parse_spec():
    assert parse_spec("cleanup,fuse,prune:ratio=0.5;criterion=l2") == [
        ("cleanup", {}),
        ("fuse", {}),
        ("prune", {"ratio": "0.5", "criterion": "l2"}),
    ]


def test_build_converts_types():
    passes = build_passes("cleanup:max_iterations=3, fold_constants:input_size_limit=10")
    assert isinstance(passes[0], Cleanup) and passes[0].options.max_iterations == 3
    assert isinstance(passes[1], FoldConstants) and passes[1].options.input_size_limit == 10


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty pass SPEC"),
        ("cleanup,,dce", "empty pass name"),
        ("nosuchpass", "unknown pass 'nosuchpass'; valid passes: cleanup, cse, dce"),
        ("cleanup:foo=1", "pass 'cleanup' has no option 'foo'; valid options: max_iterations \\(int in \\[1, 100\\], default 8\\)"),
        ("cleanup:max_iterations=abc", "'abc' is not a int"),
        ("cleanup:max_iterations=0", "below the minimum 1"),
        ("cleanup:max_iterations=1000", "above the maximum 100"),
        ("cleanup:max_iterations", "is not key=value"),
        ("cleanup:max_iterations=2;max_iterations=3", "given twice"),
        ("no_such_module_xyz.Pass", "no module 'no_such_module_xyz' on the Python path"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(SpecError, match=message) as info:
        build_passes(spec)
    assert "\n" not in str(info.value)


def test_python_options_are_checked_like_spec_strings():
    assert Cleanup(max_iterations=4).options.max_iterations == 4
    with pytest.raises(SpecError, match="is not a int"):
        Cleanup(max_iterations=2.5)
    with pytest.raises(SpecError, match="is not a int"):
        Cleanup(max_iterations=True)


def test_user_pass_by_import_path():
    (p,) = build_passes("scale_weight_pass")
    assert p.name == "test_scale_weight"
    (q,) = build_passes("break_ir_pass.BreakIR")
    assert q.name == "test_break_ir"
    with pytest.raises(SpecError, match="not a graphpress Pass"):
        build_passes("scale_weight_pass.np")
