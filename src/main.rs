// mimalloc: the request path allocates small buffers on every worker thread, and glibc's
// allocator spent a fifth of the gateway's CPU in arena locks under `switchyard bench`.
// Built with `no_thp`: mimalloc asks for transparent huge pages, and each 2 MiB page a
// few small allocations touch is resident whole (an idle daemon held 130 MB, not 23).
//
// `--features system-allocator` builds with the system's malloc instead, for heap
// profilers that see only malloc (heaptrack, valgrind's massif).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
