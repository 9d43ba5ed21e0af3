//! The WASI calls toolchains link into plugins (`wasi_snapshot_preview1`
//! and the older `wasi_unstable`): output goes to the log, the
//! environment is `vmConfig.env`, no arguments, no files, no exit.

use wasmtime::Linker;

use crate::memory::{Call, read, write};
use crate::state::HostState;

/// Links the WASI calls under both module names.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for module in crate::check::WASI_MODULES {
        link_wasi_as(linker, module)?;
    }
    Ok(())
}

fn link_wasi_as(linker: &mut Linker<HostState>, wasi: &str) -> wasmtime::Result<()> {
    const BADF: i32 = 8;
    const INVAL: i32 = 28;
    linker.func_wrap(
        wasi,
        "fd_write",
        |mut caller: Call<'_>, fd: i32, iovs: i32, count: i32, written: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return BADF;
            }
            let mut out = Vec::new();
            for i in 0..count.max(0) {
                let Ok(iov) = read(&mut caller, iovs + 8 * i, 8) else {
                    return INVAL;
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                match read(&mut caller, ptr, len) {
                    Ok(b) => out.extend(b),
                    Err(_) => return INVAL,
                }
            }
            let plugin = caller.data().plugin.clone();
            tracing::info!(%plugin, fd, "{}", String::from_utf8_lossy(&out).trim_end());
            match write(&mut caller, written, &(out.len() as u32).to_le_bytes()) {
                Ok(()) => 0,
                Err(_) => INVAL,
            }
        },
    )?;
    linker.func_wrap(
        wasi,
        "environ_sizes_get",
        |mut caller: Call<'_>, count_ptr: i32, size_ptr: i32| -> i32 {
            let env = &caller.data().env;
            let count = env.len() as u32;
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            match (
                write(&mut caller, count_ptr, &count.to_le_bytes()),
                write(&mut caller, size_ptr, &(size as u32).to_le_bytes()),
            ) {
                (Ok(()), Ok(())) => 0,
                _ => INVAL,
            }
        },
    )?;
    linker.func_wrap(
        wasi,
        "environ_get",
        |mut caller: Call<'_>, pointers: i32, buffer: i32| -> i32 {
            let env = caller.data().env.clone();
            let mut at = buffer;
            for (i, (k, v)) in env.iter().enumerate() {
                let entry = format!("{k}={v}\0");
                if write(
                    &mut caller,
                    pointers + 4 * i as i32,
                    &(at as u32).to_le_bytes(),
                )
                .is_err()
                    || write(&mut caller, at, entry.as_bytes()).is_err()
                {
                    return INVAL;
                }
                at += entry.len() as i32;
            }
            0
        },
    )?;
    linker.func_wrap(
        wasi,
        "args_sizes_get",
        |mut caller: Call<'_>, count_ptr: i32, size_ptr: i32| -> i32 {
            match (
                write(&mut caller, count_ptr, &0u32.to_le_bytes()),
                write(&mut caller, size_ptr, &0u32.to_le_bytes()),
            ) {
                (Ok(()), Ok(())) => 0,
                _ => INVAL,
            }
        },
    )?;
    linker.func_wrap(wasi, "args_get", |_: Call<'_>, _: i32, _: i32| -> i32 { 0 })?;
    linker.func_wrap(
        wasi,
        "clock_time_get",
        |mut caller: Call<'_>, _clock: i32, _precision: i64, ret: i32| -> i32 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            match write(&mut caller, ret, &now.to_le_bytes()) {
                Ok(()) => 0,
                Err(_) => INVAL,
            }
        },
    )?;
    linker.func_wrap(
        wasi,
        "random_get",
        |mut caller: Call<'_>, ptr: i32, len: i32| -> i32 {
            let bytes: Vec<u8> = (0..len.max(0)).map(|_| fastrand::u8(..)).collect();
            match write(&mut caller, ptr, &bytes) {
                Ok(()) => 0,
                Err(_) => INVAL,
            }
        },
    )?;
    linker.func_wrap(wasi, "sched_yield", |_: Call<'_>| -> i32 { 0 })?;
    // No files: reads and seeks on any descriptor fail.
    linker.func_wrap(
        wasi,
        "fd_read",
        |_: Call<'_>, _: i32, _: i32, _: i32, _: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(wasi, "fd_close", |_: Call<'_>, _: i32| -> i32 { BADF })?;
    linker.func_wrap(
        wasi,
        "fd_seek",
        |_: Call<'_>, _: i32, _: i64, _: i32, _: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        wasi,
        "fd_fdstat_get",
        |_: Call<'_>, _: i32, _: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        wasi,
        "proc_exit",
        |caller: Call<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "plugin {} called proc_exit({code})",
                caller.data().plugin
            )))
        },
    )?;
    Ok(())
}
