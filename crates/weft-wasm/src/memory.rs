//! Moving bytes across the sandbox: reading what a plugin points at
//! (checked against its memory), writing into it, and handing it data in
//! memory it allocates itself (`proxy_on_memory_allocate`, else
//! `malloc`).

use wasmtime::{Caller, Memory};

use crate::abi::Status;
use crate::state::HostState;

/// A host call's view of its instance.
pub(crate) type Call<'a> = Caller<'a, HostState>;

/// The plugin's memory (exported as `memory`, looked up when it started).
fn memory(caller: &Call<'_>) -> Result<Memory, Status> {
    caller.data().memory.ok_or(Status::InvalidMemoryAccess)
}

/// The plugin's memory, copied out at `ptr..ptr+len`.
pub(crate) fn read(caller: &mut Call<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    memory
        .data(&caller)
        .get(ptr..ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

pub(crate) fn read_str(caller: &mut Call<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| Status::ParseFailure)
}

/// The plugin's memory and the instance's state at once, so a call can
/// read what the plugin points at without copying it.
pub(crate) fn memory_and_state<'a>(
    caller: &'a mut Call<'_>,
) -> Result<(&'a [u8], &'a mut HostState), Status> {
    let memory = memory(caller)?;
    let (data, state) = memory.data_and_store_mut(caller);
    Ok((data, state))
}

/// `ptr..ptr+len` of `memory`, checked.
pub(crate) fn slice(memory: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    memory
        .get(ptr..ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Writes `bytes` into the plugin's memory at `ptr`.
pub(crate) fn write(caller: &mut Call<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = memory(caller)?;
    let ptr = ptr as u32 as usize;
    memory
        .data_mut(caller)
        .get_mut(ptr..ptr + bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Hands `bytes` to the plugin: copied into memory it allocates, the
/// address and length written at `ret_ptr` and `ret_len`.
pub(crate) fn give(
    caller: &mut Call<'_>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Status> {
    let alloc = caller.data().alloc.clone().ok_or(Status::InternalFailure)?;
    let len = i32::try_from(bytes.len()).map_err(|_| Status::BadArgument)?;
    let at = if bytes.is_empty() {
        0
    } else {
        let at = alloc
            .call(&mut *caller, len)
            .map_err(|_| Status::InternalFailure)?;
        if at == 0 {
            return Err(Status::InternalFailure);
        }
        write(caller, at, bytes)?;
        at
    };
    write(caller, ret_ptr, &(at as u32).to_le_bytes())?;
    write(caller, ret_len, &(len as u32).to_le_bytes())
}

pub(crate) fn status(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok.code(),
        Err(s) => s.code(),
    }
}
