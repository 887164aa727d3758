"""Subprocess side of the safety-net tests: one process of automatic mode in which a step of
torch's load path is made to fail. usage: faults.py STAGE STORE_URL OUT_FILE

STAGE names the step that fails, by wrapping torch's own function before megacache starts:
  none        nothing fails;
  unpickle    the stored package's Dynamo entry cannot be unpickled (a missing module);
  initialize  torch's CompilePackage.initialize raises for the packaged entry;
  install     building a guard manager raises, after install has put globals in place;
  first_call  install drops a compiled backend from the module, so the first call raises;
  record      (an empty store) torch's recording of the compiled frame for its package
              raises: the frame must compile as plain torch.compile would;
  user_error  the first call is the caller's mistake (an unknown argument): the error must
              reach the caller, and the next call runs.
Prints one JSON line: automatic stats, counters, which globals of the stored package are left
in the module, whether the user's error reached the caller, and how many times torch built a
set of guards."""

import json
import sys

import torch
from torch._dynamo import guards as dynamo_guards
from torch._dynamo import package as dynamo_package

STAGE, STORE, OUT = sys.argv[1:4]

guard_builds = 0
original_build_guards = dynamo_guards.CheckFunctionManager.build_guards


def build_guards(*args, **kwargs):
    global guard_builds
    guard_builds += 1
    return original_build_guards(*args, **kwargs)


dynamo_guards.CheckFunctionManager.build_guards = build_guards


def fail_with(error):
    def raising(*args, **kwargs):
        raise error

    return raising


if STAGE == "initialize":
    original_initialize = dynamo_package.CompilePackage.initialize

    def initialize(self, fn, dynamo=None, ignore_inlined_sources=False):
        if dynamo is not None:
            raise RuntimeError("injected: initialize")
        return original_initialize(self, fn, dynamo, ignore_inlined_sources)

    dynamo_package.CompilePackage.initialize = initialize
elif STAGE == "record":
    dynamo_package.CompilePackage.add_guarded_code = fail_with(AssertionError("injected: record"))
elif STAGE == "install":
    dynamo_package.load_guard_manager = fail_with(TypeError("injected: guard manager"))
elif STAGE == "first_call":
    original_install = dynamo_package.CompilePackage.install

    def install(self, backends):
        original_install(self, backends)
        for module, names in self._installed_globals.items():
            for name in names:
                if name.startswith("__compiled_fn"):
                    del module.__dict__[name]

    dynamo_package.CompilePackage.install = install

import megacache  # noqa: E402
from megacache.torch import precompile  # noqa: E402

if STAGE == "unpickle":
    original_entry_for = precompile.entry_for

    def entry_for(package, key, **kwargs):
        raise ModuleNotFoundError("injected: No module named 'gone'")

    precompile.entry_for = entry_for

megacache.enable(store=STORE)
import cases  # noqa: E402

from megacache import _core  # noqa: E402

store = _core.Store(STORE)
packaged_names = set()  # the globals an install of the stored package would add
for name, _, _ in store.list():
    if not name.startswith("precompile-"):
        continue  # the compile-seconds record beside it
    data = store.get(name)
    package = _core.Package.from_bytes(data, "")
    for key in package.keys():
        packaged_names.update(package.function(key)["backends"])
names_before = set(vars(cases))
model = torch.compile(cases.MLP())
user_error_reached = False
with torch.no_grad():
    if STAGE == "user_error":
        try:
            model(torch.ones(4, 16), scale=2)
        except TypeError:
            user_error_reached = True
    result = model(torch.ones(4, 16))
torch.save(result, OUT)

from torch._dynamo.utils import counters  # noqa: E402

print(
    json.dumps(
        {
            "automatic": megacache.automatic_stats(),
            "inductor": dict(counters["inductor"]),
            "aot_autograd": dict(counters["aot_autograd"]),
            "packaged_names": sorted(packaged_names),
            "packaged_names_left": sorted(packaged_names & set(vars(cases))),
            "new_names": sorted(set(vars(cases)) - names_before),
            "user_error_reached": user_error_reached,
            "guard_builds": guard_builds,
        }
    )
)
