//! No signal an operator may send by habit or by mistake (HUP, USR1, USR2, PIPE) takes the
//! server down: it keeps serving I/O and logs the signal (HUP reopens the log); SIGTERM then still stops it cleanly,
//! socket removed.
//!
//! Build the server first: `cargo build -p server && cargo test -p tests --test signals`.

use std::time::Duration;

use tests::{DriverOptions, ServerProcess, VirtioScsiDriver};

const BLOCK: u32 = 512;

#[test]
fn operator_signals_leave_the_server_serving() {
    let mut server = ServerProcess::start(&["--disk", "null,size=1M", "--log-format", "json"])
        .unwrap_or_else(|e| panic!("{e}"));
    let options = DriverOptions {
        timeout: Duration::from_secs(10),
        ..DriverOptions::default()
    };
    let mut driver = VirtioScsiDriver::connect(server.socket(), options)
        .unwrap_or_else(|e| panic!("driver: {e}\nserver stderr:\n{}", server.stderr()));
    let ready = (0..4).any(|_| driver.test_unit_ready(0).unwrap().is_good());
    assert!(ready, "LUN 0 never became ready");

    let data = vec![0x42u8; 4096];
    for (signal, name) in [
        (libc::SIGHUP, "HUP"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGUSR2, "USR2"),
        (libc::SIGPIPE, "PIPE"),
    ] {
        // SAFETY: kill only sends a signal to the server process this test started.
        assert_eq!(unsafe { libc::kill(server.pid() as i32, signal) }, 0);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            server.is_running(),
            "SIG{name} ended the server:\n{}",
            server.stderr()
        );
        let write = driver.write10(0, 0, &data, BLOCK).unwrap();
        assert!(write.is_good(), "I/O after SIG{name}");
        assert!(driver.read10(0, 0, 8, BLOCK).unwrap().is_good());
    }
    let stderr = server.stderr();
    let count = |msg: &str| stderr.lines().filter(|line| line.contains(msg)).count();
    assert_eq!(
        count("\"signal ignored\""),
        2,
        "USR1 and USR2 are logged:\n{stderr}"
    );
    assert_eq!(
        count("\"log reopened\""),
        1,
        "HUP reopens the log:\n{stderr}"
    );

    drop(driver);
    let socket = server.socket().to_path_buf();
    let status = server
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "SIGTERM after the others: {status}");
    assert!(!socket.exists(), "the socket file is removed");
}
