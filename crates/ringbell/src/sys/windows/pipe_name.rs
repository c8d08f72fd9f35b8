//! The address rule of the Windows control channel, and the text of its security
//! descriptor: platform-free, so that they are tested on every OS (like
//! `sys/macos/timeout.rs`).
//!
//! # The address rule
//!
//! A listener's address is a path, as on Unix, so that the same program source works on
//! every OS. On Windows it names a named pipe, by this rule ([`pipe_name`]):
//!
//! 1. A full local pipe name, `\\.\pipe\NAME` (the prefix in any case, as Windows compares
//!    pipe names without case), is used as it is. `NAME` must be non-empty and hold no
//!    backslash, and the whole name at most 256 UTF-16 units (Windows' limits), or it is an
//!    `InvalidInput` error.
//! 2. Any other name that starts with two backslashes (a remote pipe
//!    `\\server\pipe\NAME`, a device path `\\?\…`) is refused with `InvalidInput`: a
//!    remote pipe would leave the machine, and a silent mapping of one to a local name
//!    would hide the mistake.
//! 3. Anything else (a Unix-style socket path such as `/tmp/app.sock`, a Windows path,
//!    a bare name) becomes `\\.\pipe\ringbell-` followed by the path's text with every
//!    `/`, `\` and control character replaced by `-`: `/tmp/app.sock` is
//!    `\\.\pipe\ringbell--tmp-app.sock`. The text is taken as given (not resolved against
//!    the working directory or the file system), so two processes always agree on it.
//!    Because `/` and `\` both become `-`, `C:\run\a` and `C:/run/a` (one file on Windows)
//!    name one pipe; so do `/tmp/a-b` and `/tmp/a/b`, which is the price of a readable
//!    name.
//! 4. If that is longer than 256 UTF-16 units, the sanitized text is cut (never inside a
//!    character) so that `-` and 16 hex digits of the FNV-1a (64-bit) hash of the
//!    *original* path's UTF-8 bytes fit after it: exactly 256 units, and different long
//!    paths with a common beginning still name different pipes.
//!
//! # The security descriptor
//!
//! [`security_descriptor_text`] writes it in SDDL, for
//! `ConvertStringSecurityDescriptorToSecurityDescriptorW`: a protected DACL (nothing
//! inherited) with one entry, all file rights for the owner's SID. Nothing for Everyone,
//! Anonymous or anyone else, where the default DACL of a named pipe lets Everyone and
//! Anonymous read. With `other_users` (the Windows side of a Unix socket's mode 0666),
//! Authenticated Users may also read and write, but not create instances of the pipe
//! (`FILE_CREATE_PIPE_INSTANCE`), which would let them serve our clients.

use std::io;

/// What every local pipe name starts with.
pub(super) const PIPE_PREFIX: &str = r"\\.\pipe\";

/// What a name mapped from a path starts with.
pub(super) const MAPPED_PREFIX: &str = r"\\.\pipe\ringbell-";

/// The longest pipe name, in UTF-16 units, prefix included (CreateNamedPipeW).
pub(super) const MAX_NAME_UNITS: usize = 256;

/// The hex digits of the hash that ends a name cut to fit.
const HASH_DIGITS: usize = 16;

/// The pipe name for a listener's address, by the rule in the module docs.
pub(super) fn pipe_name(address: &str) -> io::Result<String> {
    if address.is_empty() {
        return Err(invalid_name("an empty address names no pipe"));
    }
    let full = address
        .get(..PIPE_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(PIPE_PREFIX));
    if full {
        let name = &address[PIPE_PREFIX.len()..];
        if name.is_empty() || name.contains('\\') || name.contains('\0') {
            return Err(invalid_name(format!(
                "{address} is not a pipe name: after {PIPE_PREFIX} a name must follow, \
                 with no backslash"
            )));
        }
        if address.encode_utf16().count() > MAX_NAME_UNITS {
            return Err(invalid_name(format!(
                "the pipe name {address} is longer than {MAX_NAME_UNITS} characters"
            )));
        }
        return Ok(address.to_string());
    }
    if address.starts_with(r"\\") {
        return Err(invalid_name(format!(
            "{address} is neither a local pipe name ({PIPE_PREFIX}NAME) nor a path; \
             remote pipes and device paths are refused"
        )));
    }
    let sanitized: String = address
        .chars()
        .map(|c| match c {
            '/' | '\\' => '-',
            c if c.is_control() => '-',
            c => c,
        })
        .collect();
    let name = format!("{MAPPED_PREFIX}{sanitized}");
    if name.encode_utf16().count() <= MAX_NAME_UNITS {
        return Ok(name);
    }
    let room = MAX_NAME_UNITS - MAPPED_PREFIX.len() - 1 - HASH_DIGITS;
    let mut kept = String::new();
    let mut units = 0;
    for c in sanitized.chars() {
        if units + c.len_utf16() > room {
            break;
        }
        units += c.len_utf16();
        kept.push(c);
    }
    Ok(format!(
        "{MAPPED_PREFIX}{kept}-{:0width$x}",
        fnv1a(address.as_bytes()),
        width = HASH_DIGITS
    ))
}

/// 64-bit FNV-1a: small, fixed, and the same in every version of every build, which is
/// all a name needs (not resistance to chosen collisions: whoever picks the paths picks
/// the names anyway).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn invalid_name(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.into())
}

/// The rights Authenticated Users get with `other_users`: `FILE_GENERIC_READ`
/// (0x120089), `FILE_WRITE_DATA`, `FILE_WRITE_EA`, `FILE_WRITE_ATTRIBUTES` (0x112); not
/// `FILE_CREATE_PIPE_INSTANCE` (0x4, the same bit as `FILE_APPEND_DATA`).
pub(super) const OTHER_USERS_ACCESS: u32 = 0x0012_019b;

/// `FILE_CREATE_PIPE_INSTANCE`: whoever has it can create instances of the pipe, and so
/// answer its clients.
#[cfg(test)]
pub(super) const CREATE_PIPE_INSTANCE: u32 = 0x4;

/// The pipe's security descriptor in SDDL (see the module docs): the owner's SID in its
/// text form (`S-1-5-21-…`), and whether other users may connect.
pub(super) fn security_descriptor_text(owner_sid: &str, other_users: bool) -> String {
    // D:P, a protected DACL; (A;;FA;;;SID), allow FILE_ALL_ACCESS to the owner, which
    // includes FILE_CREATE_PIPE_INSTANCE, needed to make the next instance in `accept`.
    let mut text = format!("D:P(A;;FA;;;{owner_sid})");
    if other_users {
        text.push_str(&format!("(A;;{OTHER_USERS_ACCESS:#x};;;AU)"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(name: &str) -> usize {
        name.encode_utf16().count()
    }

    #[test]
    fn a_full_pipe_name_is_used_as_it_is() {
        assert_eq!(pipe_name(r"\\.\pipe\app").unwrap(), r"\\.\pipe\app");
        assert_eq!(pipe_name(r"\\.\PIPE\App-1").unwrap(), r"\\.\PIPE\App-1");
        let longest = format!(
            r"\\.\pipe\{}",
            "x".repeat(MAX_NAME_UNITS - PIPE_PREFIX.len())
        );
        assert_eq!(pipe_name(&longest).unwrap(), longest);
    }

    #[test]
    fn a_bad_full_pipe_name_is_refused_not_mapped() {
        for bad in [
            r"\\.\pipe\".to_string(),
            r"\\.\pipe\a\b".to_string(),
            "\\\\.\\pipe\\a\0b".to_string(),
            format!(
                r"\\.\pipe\{}",
                "x".repeat(MAX_NAME_UNITS - PIPE_PREFIX.len() + 1)
            ),
            r"\\server\pipe\app".to_string(),
            r"\\?\C:\run\app.sock".to_string(),
            String::new(),
        ] {
            let error = pipe_name(&bad).expect_err(&bad);
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad}: {error}");
        }
    }

    #[test]
    fn a_path_maps_to_a_readable_name_with_separators_replaced() {
        assert_eq!(
            pipe_name("/tmp/app.sock").unwrap(),
            r"\\.\pipe\ringbell--tmp-app.sock"
        );
        assert_eq!(
            pipe_name(r"C:\run\app.sock").unwrap(),
            r"\\.\pipe\ringbell-C:-run-app.sock"
        );
        assert_eq!(
            pipe_name(r"C:\run\app.sock").unwrap(),
            pipe_name("C:/run/app.sock").unwrap(),
            "one file on Windows, one pipe"
        );
        assert_eq!(pipe_name("app").unwrap(), r"\\.\pipe\ringbell-app");
        assert_eq!(
            pipe_name("/run/b\u{e4}r\tx").unwrap(),
            "\\\\.\\pipe\\ringbell--run-b\u{e4}r-x"
        );
        // The same path, the same name, every time (no randomness, no file system).
        assert_eq!(pipe_name("/tmp/x").unwrap(), pipe_name("/tmp/x").unwrap());
    }

    #[test]
    fn a_long_path_is_cut_to_fit_and_ends_with_its_hash() {
        let fits = format!("/{}", "a".repeat(MAX_NAME_UNITS - MAPPED_PREFIX.len() - 1));
        let name = pipe_name(&fits).unwrap();
        assert_eq!(units(&name), MAX_NAME_UNITS);
        assert!(!name.contains(&format!("{:016x}", fnv1a(fits.as_bytes()))));

        let long = format!("/srv/{}/one.sock", "d".repeat(300));
        let other = format!("/srv/{}/two.sock", "d".repeat(300));
        let name = pipe_name(&long).unwrap();
        assert_eq!(units(&name), MAX_NAME_UNITS, "{name}");
        assert!(name.starts_with(r"\\.\pipe\ringbell--srv-ddd"), "{name}");
        assert!(
            name.ends_with(&format!("-{:016x}", fnv1a(long.as_bytes()))),
            "{name}"
        );
        assert!(!name[PIPE_PREFIX.len()..].contains('\\'));
        assert_ne!(name, pipe_name(&other).unwrap(), "a common beginning");
        assert_eq!(name, pipe_name(&long).unwrap(), "deterministic");

        // Characters of two UTF-16 units are never split.
        let wide = format!("/{}", "\u{1F514}".repeat(200));
        let name = pipe_name(&wide).unwrap();
        assert!(units(&name) <= MAX_NAME_UNITS);
        assert!(units(&name) >= MAX_NAME_UNITS - 1);
    }

    #[test]
    fn the_hash_is_fnv1a_64() {
        // Published test vectors of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_security_descriptor_names_the_owner_alone() {
        let sid = "S-1-5-21-1-2-3-1001";
        assert_eq!(
            security_descriptor_text(sid, false),
            "D:P(A;;FA;;;S-1-5-21-1-2-3-1001)"
        );
        let shared = security_descriptor_text(sid, true);
        assert_eq!(shared, "D:P(A;;FA;;;S-1-5-21-1-2-3-1001)(A;;0x12019b;;;AU)");
        for nobody in ["WD", "AN", "BU", "NU"] {
            assert!(!shared.contains(&format!(";;;{nobody})")), "{nobody}");
        }
        assert_eq!(OTHER_USERS_ACCESS & CREATE_PIPE_INSTANCE, 0);
    }
}
