// mimalloc: the request path allocates small buffers on every worker thread, and glibc's
// allocator spent a fifth of the gateway's CPU in arena locks under `switchyard bench`.
// See src/alloc.rs for how it is asked.
//
// `--features system-allocator` builds with the system's malloc instead, for heap
// profilers that see only malloc (heaptrack, valgrind's massif).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: switchyard::alloc::MiMalloc = switchyard::alloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
