//! Windows extensions.

use std::os::windows::io::{AsHandle, BorrowedHandle};

use crate::{ClientConfig, Connection, Error, ServerConfig};

/// The handles of a [`Connection`], for an event loop of your own
/// (`WaitForMultipleObjects`, `RegisterWaitForSingleObject`...). See
/// [`Connection::arm_doorbell`] for the protocol.
///
/// ```no_run
/// use std::os::windows::io::AsRawHandle;
/// use ringbell::os::windows::ConnectionExt;
/// use ringbell::{ClientConfig, Connection};
/// use windows_sys::Win32::System::Threading::{WaitForMultipleObjects, INFINITE};
///
/// let mut conn = Connection::connect(r"\\.\pipe\app", ClientConfig::default())?;
/// let mut buf = Vec::new();
/// loop {
///     if let Some(n) = conn.try_recv(&mut buf)? {
///         println!("got {n} bytes");
///         break;
///     }
///     if conn.arm_doorbell()? {
///         let mut handles = vec![conn.doorbell_handle().as_raw_handle()];
///         // The peer's process: signalled when it ends.
///         handles.extend(conn.peer_process_handle().map(|process| process.as_raw_handle()));
///         // SAFETY: the handles are borrowed from `conn`, alive for the call.
///         unsafe { WaitForMultipleObjects(handles.len() as u32, handles.as_ptr(), 0, INFINITE) };
///     }
/// }
/// # Ok::<(), ringbell::Error>(())
/// ```
///
/// # Platform-specific behaviour
///
/// The doorbell is an auto-reset event: the wait that sees a ring also resets it (where a
/// Unix doorbell stays readable until drained), so only one waiter may wait on it. The
/// peer's death is seen through its process, not through the control pipe.
pub trait ConnectionExt {
    /// The doorbell: an auto-reset event (with `SYNCHRONIZE` and `EVENT_QUERY_STATE`
    /// only, and whose DACL lets no holder widen that) that the peer sets
    /// after it sent, when this side is armed (see [`Connection::arm_doorbell`]). Wait on
    /// it; never set it yourself.
    fn doorbell_handle(&self) -> BorrowedHandle<'_>;
    /// The peer's process (with `SYNCHRONIZE`), signalled when it ends: the peer's death.
    /// `None` only if the handshake did not give it (a server that sent it no process
    /// handle); the connection then notices the death at its next look at the pipe.
    fn peer_process_handle(&self) -> Option<BorrowedHandle<'_>>;
}

impl ConnectionExt for Connection {
    fn doorbell_handle(&self) -> BorrowedHandle<'_> {
        self.doorbell().as_handle()
    }

    fn peer_process_handle(&self) -> Option<BorrowedHandle<'_>> {
        self.control()
            .peer_process()
            .ok()
            .map(|process| process.as_handle())
    }
}

/// Windows settings of a [`ServerConfig`]: which other users may connect, named by SID,
/// since Windows users have no uid ([`ServerConfig::allow_uid`] admits nobody there).
///
/// # Examples
///
/// ```no_run
/// use ringbell::os::windows::ServerConfigExt;
/// use ringbell::{Server, ServerConfig};
///
/// // A service account's clients, besides the server's own user.
/// let config = ServerConfig::default().allow_sid("S-1-5-21-1004336348-1177238915-682003330-1001")?;
/// let server = Server::bind(r"\\.\pipe\app", config)?;
/// # let _ = server;
/// # Ok::<(), ringbell::Error>(())
/// ```
///
/// # Platform-specific behaviour
///
/// Windows only: the Unix twin is [`ServerConfig::allow_uid`]. Tested under Wine 8 with
/// one user only (the decision with other SIDs is unit-tested), never yet on Windows.
pub trait ServerConfigExt: Sized {
    /// Admits clients whose process runs as the user `sid`, in addition to the server's
    /// own user and any admitted before. `sid` is the SID's usual text form,
    /// `S-1-5-21-…` (as `whoami /user` prints it), in any case.
    ///
    /// Once any SID is admitted, the pipe's DACL lets Authenticated Users connect too
    /// (read and write, never create an instance of the pipe), and the server admits or
    /// refuses each client by the user of its process's token: others get
    /// [`Error::PermissionDenied`] from the server rather than from the pipe, as on Unix
    /// with [`ServerConfig::allow_uid`].
    ///
    /// The SID is compared with the token's *user* only, never its groups: a group's SID
    /// (Administrators, Everyone) admits nobody, and SDDL's abbreviations of them (`BA`,
    /// `WD`) are refused as input. Whether an account has the SID is not checked: a SID
    /// of no account admits nobody. The server's own SID may be given too; it is admitted
    /// anyway, but the pipe is then opened to Authenticated Users all the same.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `sid` is not a SID in its usual form: text the system
    /// does not read as a SID, or reads but writes otherwise (an abbreviation such as
    /// `SY`, hexadecimal numbers, spaces).
    fn allow_sid(self, sid: &str) -> Result<Self, Error>;
}

impl ServerConfigExt for ServerConfig {
    fn allow_sid(mut self, sid: &str) -> Result<Self, Error> {
        self.allowed_users.push(parse_sid(sid)?);
        Ok(self)
    }
}

/// Windows settings of a [`ClientConfig`]: which servers a client talks to, named by SID
/// ([`ClientConfig::trust_server_uid`] trusts nobody there).
///
/// # Examples
///
/// ```no_run
/// use ringbell::os::windows::ClientConfigExt;
/// use ringbell::{ClientConfig, Connection};
///
/// // A server run by a service account.
/// let config = ClientConfig::default().trust_server_sid("S-1-5-21-1004336348-1177238915-682003330-1001")?;
/// let conn = Connection::connect(r"\\.\pipe\app", config)?;
/// # let _ = conn;
/// # Ok::<(), ringbell::Error>(())
/// ```
///
/// # Platform-specific behaviour
///
/// Windows only: the Unix twin is [`ClientConfig::trust_server_uid`]. Tested under Wine 8
/// with one user only, never yet on Windows.
pub trait ClientConfigExt: Sized {
    /// Trusts a server whose process runs as the user `sid`, in addition to those trusted
    /// before. By default a client talks only to a server of its own user or LocalSystem's
    /// (S-1-5-18): anyone could have created the pipe's name first, and a client would
    /// otherwise hand its messages to that impostor. The server's user is read from its
    /// process's token; an untrusted server gives [`Error::PermissionDenied`] before a
    /// byte is sent. `sid` is read as [`ServerConfigExt::allow_sid`] reads it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `sid` is not a SID in its usual form `S-1-5-21-…`.
    fn trust_server_sid(self, sid: &str) -> Result<Self, Error>;
}

impl ClientConfigExt for ClientConfig {
    fn trust_server_sid(mut self, sid: &str) -> Result<Self, Error> {
        self.trusted_server_users.push(parse_sid(sid)?);
        Ok(self)
    }
}

/// The user named by `sid`, or the configuration error that says why it names none.
fn parse_sid(sid: &str) -> Result<crate::sys::User, Error> {
    crate::sys::User::from_sid_text(sid).map_err(|error| Error::InvalidConfig {
        detail: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{current_user, User};

    const OTHER: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
    const THIRD: &str = "S-1-5-21-1004336348-1177238915-682003330-1002";

    fn user(sid: &str) -> User {
        User::from_sid_text(sid).unwrap()
    }

    #[test]
    fn a_server_admits_its_own_user_and_the_sids_it_was_given() {
        let own = current_user();
        let default = ServerConfig::default();
        assert!(default.admits(own, own));
        assert!(!default.admits(user(OTHER), own));
        assert!(
            !default.admits(user("S-1-5-18"), own),
            "LocalSystem is not special"
        );
        assert!(!default.admits_other_users());

        let config = ServerConfig::default().allow_sid(OTHER).unwrap();
        assert!(config.admits(own, own));
        assert!(config.admits(user(OTHER), own));
        assert!(!config.admits(user(THIRD), own));
        assert!(
            config.admits_other_users(),
            "the pipe must let the others connect"
        );
        let both = config.allow_sid(THIRD).unwrap();
        assert!(both.admits(user(OTHER), own) && both.admits(user(THIRD), own));

        // The server's own SID given explicitly changes nothing for it.
        let explicit = ServerConfig::default().allow_sid(&own.to_string()).unwrap();
        assert!(explicit.admits(own, own));
        assert!(!explicit.admits(user(OTHER), own));

        // A uid admits nobody here.
        let by_uid = ServerConfig::default().allow_uid(1000);
        assert!(!by_uid.admits(user(OTHER), own));
    }

    #[test]
    fn a_client_trusts_its_own_user_local_system_and_the_sids_it_was_given() {
        let own = current_user();
        let default = ClientConfig::default();
        assert!(default.trusts_server(own, own));
        assert!(default.trusts_server(user("S-1-5-18"), own));
        assert!(!default.trusts_server(user(OTHER), own));

        let config = ClientConfig::default().trust_server_sid(OTHER).unwrap();
        assert!(config.trusts_server(user(OTHER), own));
        assert!(!config.trusts_server(user(THIRD), own));
        assert!(!ClientConfig::default()
            .trust_server_uid(0)
            .trusts_server(user(OTHER), own));
    }

    #[test]
    fn a_server_given_sids_explicitly_still_serves_its_own_user() {
        use crate::Server;
        use std::time::Duration;

        let own = current_user().to_string();
        let path =
            std::env::temp_dir().join(format!("ringbell-allow-sid-{}.sock", std::process::id()));
        // Its own SID and another's: the pipe is open to Authenticated Users, and the
        // server checks each client's SID itself.
        let config = ServerConfig::default()
            .allow_sid(&own)
            .unwrap()
            .allow_sid(OTHER)
            .unwrap();
        let server = Server::bind(&path, config).unwrap();
        let echo = std::thread::spawn(move || {
            let mut conn = server.accept().unwrap();
            let mut buf = Vec::new();
            conn.recv(&mut buf, Some(Duration::from_secs(30))).unwrap();
            conn.send(&buf).unwrap();
            // Until the client has read it and gone.
            assert!(matches!(
                conn.recv(&mut buf, Some(Duration::from_secs(30))),
                Err(Error::PeerDied)
            ));
        });
        let client = ClientConfig::default().trust_server_sid(&own).unwrap();
        let mut conn = Connection::connect(&path, client).unwrap();
        conn.send(b"by SID").unwrap();
        let mut buf = Vec::new();
        conn.recv(&mut buf, Some(Duration::from_secs(30))).unwrap();
        assert_eq!(buf, b"by SID");
        drop(conn);
        echo.join().unwrap();
    }

    #[test]
    fn garbage_is_an_invalid_config_that_says_what_was_wrong() {
        for garbage in ["", "S-1-5-21-x", "BA", "Administrators", "S-1-5-18 "] {
            match ServerConfig::default().allow_sid(garbage) {
                Err(Error::InvalidConfig { detail }) => {
                    assert!(detail.contains("S-1-5-21-…"), "{detail}");
                    assert!(detail.contains(&format!("{garbage:?}")), "{detail}");
                }
                other => panic!("{garbage:?}: {other:?}"),
            }
            assert!(matches!(
                ClientConfig::default().trust_server_sid(garbage),
                Err(Error::InvalidConfig { .. })
            ));
        }
    }
}
