// mimalloc: the request path allocates small buffers on every worker thread, and glibc's
// allocator spent a fifth of the gateway's CPU in arena locks under `switchyard bench`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
