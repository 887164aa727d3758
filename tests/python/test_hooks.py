"""megacache.torch.hooks, the repairs of torch's precompile path, piece by piece (no compile)."""

import functools
import inspect
import io
import pickle

from torch._dynamo import bytecode_transformation
from torch._dynamo.guards import GuardsStatePickler, _Missing

from megacache.torch import hooks


def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


class Model:
    @decorate
    def forward(self, x):
        return x + 1


def plain(x):
    return x


def guards_pickler(file):
    """torch's GuardsStatePickler with empty tables: it takes one table more in 2.15
    (value_guarded_containers), each before the file."""
    tables = [
        name
        for name in inspect.signature(GuardsStatePickler.__init__).parameters
        if name not in ("self", "args", "kwargs")
    ]
    return GuardsStatePickler(*({} for _ in tables), file)


def test_a_function_behind_a_wraps_decorator_pickles_as_itself():
    hooks.patch()
    inner = Model.forward.__wrapped__

    def round_trip(obj):
        buffer = io.BytesIO()
        guards_pickler(buffer).dump(obj)
        return pickle.loads(buffer.getvalue())

    assert round_trip(inner) is inner
    assert round_trip(Model.forward) is Model.forward  # the wrapper itself, by name
    assert round_trip(plain) is plain
    # torch's own reducer, which megacache's wraps, stores a placeholder instead.
    torch_reducer = GuardsStatePickler.reducer_override.__wrapped__
    assert torch_reducer(guards_pickler(io.BytesIO()), inner)[0] is _Missing


def test_unique_names_move_past_every_installed_name():
    hooks.advance_unique_ids([])
    start = int(bytecode_transformation.unique_id("x").rsplit("_", 1)[1])
    hooks.advance_unique_ids(
        [
            f"__builtins_dict___{start + 40}",
            f"__compiled_fn_{start + 56}_0a1b2c3d_4e5f_6a7b_8c9d_0e1f2a3b4c5d",
            "__import_torch",
            "___module_collections_139908171910576_c0",
        ]
    )
    assert bytecode_transformation.unique_id("x") == f"x_{start + 57}"
    hooks.advance_unique_ids([f"__builtins_dict___{start}"])  # never moves back
    assert bytecode_transformation.unique_id("x") == f"x_{start + 58}"


def test_the_backward_is_saved_as_recorded_in_both_call_forms_of_post_compile():
    """torch 2.11 passes AOTDispatchAutograd.post_compile its fields as arguments (with
    try_save_cache_entry by keyword); 2.13 and later pass one spec. In both, the backward's
    cache entry, saved on the first backward call after the forward's compile has ended, is
    saved with caching_precompile on, as its forward was recorded."""
    import dataclasses

    import torch

    seen = []

    def save(*args):
        seen.append(torch._dynamo.config.caching_precompile)

    def original(*args, **kwargs):
        return args, kwargs  # what AOTAutograd keeps: the saver runs on the first backward

    @dataclasses.dataclass
    class Spec:
        aot_config: object
        try_save_cache_entry: object

    post_compile = hooks._save_backward_as_recorded(original)
    with hooks.Recording():  # the forward's compile, recorded
        args, kwargs = post_compile("fw", "bw", fw_metadata="meta", try_save_cache_entry=save)
        (spec,), _ = post_compile(Spec("config", save))
    assert args == ("fw", "bw") and kwargs["fw_metadata"] == "meta" and spec.aot_config == "config"
    assert not torch._dynamo.config.caching_precompile
    kwargs["try_save_cache_entry"]()  # the first backward of each
    spec.try_save_cache_entry()
    assert seen == [True, True]
    assert not torch._dynamo.config.caching_precompile
