//! The binary's socket lifecycle: 0600, a live path refused, a stale one replaced, the file
//! removed on SIGTERM; and a vfio-user client getting through discovery of the built-in device.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn spawn(socket: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vfio-user-scsi"))
        .arg("--socket")
        .arg(socket)
        .args(["--log-level", "debug", "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_until_listening(socket: &Path) {
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never accepted connections", socket.display());
}

fn terminate(child: Child) -> (std::process::ExitStatus, String) {
    // SAFETY: kill only sends a signal to the child we spawned and have not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn socket_is_0600_live_path_refused_removed_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vus.sock");
    let server = spawn(&socket);
    wait_until_listening(&socket);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let second = Command::new(env!("CARGO_BIN_EXE_vfio-user-scsi"))
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let refusal = String::from_utf8_lossy(&second.stderr);
    assert!(refusal.contains("already listening"), "{refusal}");
    assert!(
        refusal.contains(&format!("--socket {}", socket.display())),
        "the error names the option and its value: {refusal}"
    );
    assert!(
        socket.exists(),
        "the refused server must not remove the live socket"
    );

    let (status, log) = terminate(server);
    assert!(status.success(), "{status:?}: {log}");
    assert!(!socket.exists());
    assert!(log.contains("\"msg\":\"stopping\""), "{log}");
    // The default disk is memory: nothing to flush; each step of the exit is logged.
    assert!(!log.contains("\"msg\":\"disk flushed\""), "{log}");
    for step in ["stopping the iothreads", "closing the disks"] {
        assert!(
            log.contains(&format!("\"step\":\"{step}\"")),
            "{step}: {log}"
        );
    }
    assert!(log.contains("\"msg\":\"shutdown steps done\""), "{log}");
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let server = spawn(&socket);
    wait_until_listening(&socket);
    let (status, _) = terminate(server);
    assert!(status.success());
}

#[test]
fn a_client_discovers_the_built_in_device_and_each_message_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vus.sock");
    let server = spawn(&socket);
    wait_until_listening(&socket);
    let mut client = vfio_user::Client::new(&socket).unwrap();
    for index in 0..9 {
        assert!(client.region(index).is_some(), "region {index}");
    }
    assert_eq!(client.region(7).unwrap().size, 256);
    let mut vendor = [0u8; 2];
    client.region_read(7, 0, &mut vendor).unwrap();
    assert_eq!(u16::from_le_bytes(vendor), 0x1af4);
    for index in 0..5 {
        client.get_irq_info(index).unwrap();
    }
    drop(client);
    let (status, log) = terminate(server);
    assert!(status.success());
    for command in [
        "VERSION",
        "DEVICE_GET_INFO",
        "DEVICE_GET_REGION_INFO",
        "DEVICE_GET_IRQ_INFO",
        "REGION_READ",
    ] {
        assert!(
            log.contains(&format!("\"command\":\"{command}\"")),
            "{command} not logged: {log}"
        );
    }
    assert!(
        log.contains("client connected") && log.contains("client disconnected"),
        "{log}"
    );
}
