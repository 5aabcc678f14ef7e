//! The control socket and the command line as an operator meets them, without a guest: every bad
//! request gets a JSON error and the next request is still served, `ctl` exit statuses, a log
//! sink that fails (`/dev/full`) while the daemon serves on, the socket's mode, `--version`, and
//! one exit status for every command-line mistake.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tests::server_process::{self, server_binary};
use tests::ServerProcess;

fn ctl(socket: &Path, args: &[&str]) -> (Option<i32>, String) {
    server_process::ctl(socket, args).unwrap()
}

fn wait_for(path: &Path) {
    for _ in 0..500 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn each_bad_request_gets_its_error_and_the_next_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let _server = ServerProcess::start(&[
        "--control-socket",
        control.to_str().unwrap(),
        "--disk",
        "null,size=1M",
    ])
    .unwrap();
    wait_for(&control);
    let stream = UnixStream::connect(&control).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut exchange = |request: &str| {
        writeln!(writer, "{request}").unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        serde_json::from_str::<serde_json::Value>(&reply).unwrap()
    };
    let cases = [
        ("not json", "bad request: expected ident"),
        ("{\"command\":\"explode\"}", "unknown variant `explode`"),
        (
            "{\"command\":\"query\",\"extra\":1}",
            "unknown field `extra`",
        ),
        ("{\"command\":\"remove-disk\"}", "missing field `lun`"),
        (
            "{\"command\":\"remove-disk\",\"lun\":7}",
            "LUN 7 does not exist",
        ),
        (
            "{\"command\":\"add-disk\",\"spec\":\"path=/nonexistent/x.img\"}",
            "/nonexistent/x.img",
        ),
        (
            "{\"command\":\"add-disk\",\"spec\":\"null,size=1M,lun=0\"}",
            "LUN 0 is in use",
        ),
        (
            "{\"command\":\"add-disk\",\"spec\":\"null,sise=1M\"}",
            "unknown option 'sise'",
        ),
        (
            "{\"command\":\"resize\",\"lun\":0,\"size\":\"lots\"}",
            "size 'lots'",
        ),
        (
            "{\"command\":\"resize\",\"lun\":0}",
            "resize needs the new size",
        ),
        (
            "{\"command\":\"set-log-level\",\"level\":\"loud\"}",
            "'loud' is not one of",
        ),
    ];
    for (request, error) in cases {
        let reply = exchange(request);
        assert_eq!(reply["ok"], false, "{request}: {reply}");
        let message = reply["error"].as_str().unwrap();
        assert!(message.contains(error), "{request}: {message}");
        let next = exchange("{\"command\":\"query\"}");
        assert_eq!(next["ok"], true, "after {request}: {next}");
    }
    let added = exchange("{\"command\":\"add-disk\",\"spec\":\"null,size=2M\"}");
    assert_eq!(added["result"]["lun"], 1, "{added}");
    let resized = exchange("{\"command\":\"resize\",\"lun\":1,\"size\":\"4M\"}");
    assert_eq!(resized["result"]["size"], 4 << 20, "{resized}");
    let query = exchange("{\"command\":\"query\"}");
    let luns = query["result"]["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 2, "{query}");
    assert_eq!(luns[1]["size"], 4 << 20);
    assert_eq!(query["result"]["client"]["connected"], false);
    let removed = exchange("{\"command\":\"remove-disk\",\"lun\":1}");
    assert_eq!(removed["ok"], true, "{removed}");

    assert_eq!(ctl(&control, &["query"]).0, Some(0));
    let (status, reply) = ctl(&control, &["remove-disk", "9"]);
    assert_eq!(status, Some(1), "{reply}");
    assert!(reply.contains("LUN 9 does not exist"), "{reply}");
    assert_eq!(ctl(&control, &["frobnicate"]).0, Some(2));
    assert_eq!(
        std::fs::metadata(&control).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_log_on_dev_full_does_not_stop_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let mut server = ServerProcess::start(&[
        "--control-socket",
        control.to_str().unwrap(),
        "--disk",
        "null,size=1M",
        "--log-file",
        "/dev/full",
        "--log-level",
        "debug",
    ])
    .unwrap();
    wait_for(&control);
    for _ in 0..20 {
        assert_eq!(ctl(&control, &["set-log-level", "debug"]).0, Some(0));
    }
    let (status, reply) = ctl(&control, &["query"]);
    assert_eq!(status, Some(0), "{reply}");
    let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert!(
        value["result"]["log"]["dropped_records"].as_u64().unwrap() > 0,
        "{reply}"
    );
    assert!(server.is_running());
    let status = server.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn socket_mode_version_and_exit_statuses() {
    let mut server =
        ServerProcess::start(&["--disk", "null,size=1M", "--socket-mode", "0660"]).unwrap();
    assert_eq!(
        std::fs::metadata(server.socket())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o660
    );
    server.terminate(Duration::from_secs(10)).unwrap();

    let version = Command::new(server_binary().unwrap())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(version.contains("(git "), "{version}");

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let socket = socket.to_str().unwrap();
    // Mistakes on the command line exit with 2, whoever finds them; nothing is created first.
    for args in [
        vec!["--socket", socket, "--num-queues", "0"],
        vec!["--socket", socket, "--iothread-vq-mapping", "[]"],
        vec![
            "--socket",
            socket,
            "--disk",
            "null,size=1M,lun=1",
            "--disk",
            "null,size=1M,lun=1",
        ],
        vec!["--socket", socket, "--socket-owner", "no-such-user-here"],
    ] {
        let (status, stderr) = ServerProcess::run_to_exit(&args, Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("temporary disk"), "{stderr}");
        assert!(!Path::new(socket).exists());
    }
    // A JSON log on stderr stays JSON, errors included.
    let (status, stderr) = ServerProcess::run_to_exit(
        &[
            "--socket",
            socket,
            "--log-format",
            "json",
            "--disk",
            "path=/nonexistent/d.img",
        ],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    for line in stderr.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "{line}"
        );
    }
    let (status, stderr) = ServerProcess::run_to_exit(
        &["--socket", socket, "--log-file", "/nonexistent/dir/log"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/dir/log"), "{stderr}");
}
