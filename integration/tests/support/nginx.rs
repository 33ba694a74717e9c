//! A real nginx (Debian) serving a directory on a free loopback port, with
//! an access log of every request: URI, status, bytes sent (headers and
//! body) and request length. Stopped when dropped.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Nginx {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub uri: String,
    pub status: u16,
    /// Response bytes, headers included.
    pub sent: u64,
    /// Request bytes (request line and headers).
    pub received: u64,
}

impl Nginx {
    pub fn serve(root: &Path) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  log_format t '$request_uri $status $bytes_sent $request_length';\n\
               access_log {d}/access.log t;\n  client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               keepalive_requests 1000000;\n  default_type application/octet-stream;\n\
               server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            root.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { port, child, dir }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                Some(Request {
                    uri: f.next()?.to_owned(),
                    status: f.next()?.parse().ok()?,
                    sent: f.next()?.parse().ok()?,
                    received: f.next()?.parse().ok()?,
                })
            })
            .collect()
    }
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("nginx is not installed (integration/run-tests installs it: apt-get install nginx)");
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
