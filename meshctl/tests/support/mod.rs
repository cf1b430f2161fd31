//! Runs the real `meshctl` binary as a user does, for the CLI tests.

#![allow(dead_code, unreachable_pub)]

use std::{
    ffi::OsStr,
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

/// A file of the shared Istio compatibility set.
pub fn compat(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/istio-compat")
        .join(file)
        .display()
        .to_string()
}

/// What one run of `meshctl` did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `meshctl` with `global` options (the store) before `args`, `stdin` as its input, and
/// no store from the environment.
pub fn meshctl<G: AsRef<OsStr>>(global: &[G], args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    cmd.env_remove("MESH_CONFIG_DIR")
        .env_remove("MESH_STORE")
        .args(global)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("meshctl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}
