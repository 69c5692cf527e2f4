//! The `ringkv` binary: parse flags, start the executors, serve until killed.

use clap::Parser;
use ringkv_server::config::logging::LogSettings;
use ringkv_server::config::{etcd_flags, Flags, MAX_REQUEST_BYTES_RECOMMENDED};
use ringkv_server::{logging, placement, server};

/// No transparent huge pages for this process (mimalloc's `allow_thp=0`, done
/// here because mimalloc reads its options before `main`). mimalloc asks for
/// huge pages on its arenas and gives idle memory back after a few ms; each
/// fault that takes the memory again then zeroes a whole 2 MiB page: under
/// puts on three members, a share of the store cores' time worth removing
/// (docs/benchmarks.md). A kernel without the call keeps them: only slower.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// mimalloc, not glibc's malloc: a Range's key-values are allocated on the
/// store core and freed on a client core once sent, and glibc serialises such
/// frees on the allocating thread's arena lock (under the kube mix the futex
/// wake-ups alone were 8% of the store core; see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the memory a restart freed back to the OS now. Recovery reads every
/// WAL segment whole and frees it; mimalloc returns freed memory only after a
/// delay, from a later allocation or free, and a store core that goes idle
/// after recovery makes none: a member restarted on 128 MiB of segments kept
/// them resident (docs/benchmarks.md).
fn return_freed_memory() {
    // SAFETY: mi_collect takes a flag and only walks mimalloc's own state.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// What each executor calls every second (see `server::start`): frees the
/// calling thread's empty pages and returns to the OS the memory whose purge
/// delay has passed. Not forced, so memory freed moments ago stays for the
/// next allocation, as mimalloc's own purge delay intends.
fn return_thread_freed_memory() {
    // SAFETY: as above.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

fn main() {
    disable_transparent_huge_pages();
    // etcd's flags that ringkv ignores or refuses, before clap: its own message.
    let (args, ignored) = match etcd_flags::screen(std::env::args_os(), unicode_vars()) {
        Ok(screened) => screened,
        Err(error) => {
            eprintln!("ringkv: {error}");
            std::process::exit(1);
        }
    };
    let flags = Flags::parse_from(args);
    let logs = LogSettings::parse(&flags.logger, &flags.log_outputs, &flags.log_level)
        .map_err(|error| error.to_string())
        .and_then(|settings| logging::init(&settings).map_err(|error| error.to_string()));
    if let Err(error) = logs {
        eprintln!("ringkv: {error}");
        std::process::exit(1);
    }
    // A panic ends only its own executor thread; the others would carry on
    // answering "server stopped" forever. Stop the whole process instead: a
    // restart recovers from the WAL.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let online_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = match flags.into_config(online_cpus, placement::disk_interrupts) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ringkv: {error}");
            std::process::exit(1);
        }
    };
    for warning in ignored.iter().chain(&config.warnings) {
        tracing::warn!("{warning}");
    }
    if let Some(disk) = &config.store_cpu_by_disk {
        tracing::info!(
            store_cpu = config.store_cpu,
            disk = disk.disk,
            irq = disk.irq,
            "the store core runs on the CPU that takes the data directory's disk interrupts"
        );
    }
    tracing::info!(
        ringkv_version = ringkv_server::version::RINGKV_VERSION,
        etcd_version = ringkv_server::version::ETCD_COMPATIBLE_VERSION,
        "starting ringkv"
    );
    if config.max_request_bytes > MAX_REQUEST_BYTES_RECOMMENDED {
        tracing::warn!(
            max_request_bytes = config.max_request_bytes,
            recommended = MAX_REQUEST_BYTES_RECOMMENDED,
            "--max-request-bytes exceeds the recommended limit: large requests may slow the whole cluster"
        );
    }
    let running = match server::start(&config, return_thread_freed_memory) {
        Ok(running) => running,
        Err(error) => {
            eprintln!("ringkv: {error}");
            std::process::exit(1);
        }
    };
    return_freed_memory();
    for addr in &running.client_addrs {
        tracing::info!(
            member_id = format_args!("{:x}", running.identity.member_id),
            data_dir = %config.data_dir.display(),
            "ready: serving client requests on {addr}"
        );
    }
    running.wait();
}

/// The environment's variables that are text (etcd's are; others cannot be
/// one of its flags).
fn unicode_vars() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
}
