// A shared library the tests copy into a Triton-style cache dir and dlopen, so that
// read_loaded_triton_modules is tested against the dynamic loader itself.
extern "C" int megacache_loadable_module_answer() { return 42; }
