//! Dropping root after start-up (`user = "NAME"` in the config, `esplab peer --user NAME`).
//!
//! Everything that needs privileges is opened first: the TUN device (CAP_NET_ADMIN), the
//! routes, UDP 500 (a port below 1024), the raw ESP socket (CAP_NET_RAW: checked when the
//! socket is created, not when it is used), the log and events files and the control socket.
//! Then the daemon becomes `NAME` for good: supplementary groups, gid, uid, in that order
//! (after `setuid` it could no longer change its groups). What it cannot do any more
//! (docs/RELIABILITY.md, "Key and process hygiene"): remove its
//! routes itself at exit (the kernel removes them with the TUN device), unlink the control
//! socket in a directory it cannot write (a stale socket is replaced at the next start), and
//! write capture dumps into a directory the user cannot write.

use std::ffi::CString;
use std::io;

/// The identity the daemon runs as after [`drop_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Looks `user` up in the password database (a name, or a numeric uid).
pub fn lookup(user: &str) -> io::Result<Ids> {
    let name = CString::new(user)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers and zero ids); it is only read
        // after getpwnam_r/getpwuid_r filled it in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = match user.parse::<u32>() {
            // SAFETY: every pointer is valid for the call: `pwd` and `result` are locals,
            // `buf` is a live buffer of the given length.
            Ok(uid) => unsafe {
                libc::getpwuid_r(
                    uid,
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            },
            // SAFETY: as above; `name` is a NUL-terminated string that outlives the call.
            Err(_) => unsafe {
                libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            },
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no such user {user:?}"),
            ));
        }
        return Ok(Ids {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
    }
}

fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Becomes `user` for good: groups, gid, uid; then checks that root cannot be regained.
/// glibc applies set*id to every thread of the process.
pub fn drop_to(user: &str) -> io::Result<Ids> {
    let ids = lookup(user)?;
    let groups = [ids.gid as libc::gid_t];
    // SAFETY: `groups` is a live array of the given length.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(os_err("setgroups"));
    }
    // SAFETY: plain system calls on integer arguments.
    if unsafe { libc::setresgid(ids.gid, ids.gid, ids.gid) } != 0 {
        return Err(os_err("setresgid"));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(ids.uid, ids.uid, ids.uid) } != 0 {
        return Err(os_err("setresuid"));
    }
    // SAFETY: plain system calls.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    if uid != ids.uid || euid != ids.uid {
        return Err(io::Error::other(format!(
            "still uid {uid} (euid {euid}) after setresuid({})",
            ids.uid
        )));
    }
    // A process that could become root again would not have dropped anything.
    // SAFETY: as above.
    if ids.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::other(
            "could regain root after dropping privileges",
        ));
    }
    Ok(ids)
}

/// The daemon's single call: drops to `user` when one is configured, returning the log
/// line to write. The error names the user.
pub fn drop_if_configured(user: Option<&str>) -> io::Result<Option<String>> {
    let Some(user) = user else { return Ok(None) };
    let ids = drop_to(user).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("dropping privileges to user {user:?}: {e}"),
        )
    })?;
    Ok(Some(format!(
        "privileges dropped: now uid {} gid {} ({user}); TUN device, sockets and files were opened before",
        ids.uid, ids.gid
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_root_by_name_and_number_and_refuses_unknown_users() {
        assert_eq!(lookup("root").unwrap(), Ids { uid: 0, gid: 0 });
        assert_eq!(lookup("0").unwrap().uid, 0);
        let e = lookup("no-such-user-esplab-xyz").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(lookup("a\0b").is_err());
        assert_eq!(drop_if_configured(None).unwrap(), None);
    }
}
