//! `xdt-service-health`: the sample service protected in the xdt demo. `GET /healthz` answers
//! `200 ok`; `GET /echo/...` answers with its own path and `POST /echo` with the request body
//! (up to 16 MiB), so a client can check that what it sent arrived unchanged; any other path
//! `404`. It prints `listening on ADDR` once bound (so `--listen
//! 127.0.0.1:0` can be used by tests; under systemd it also sends `READY=1`) and serves on a few
//! threads until killed.

use std::{
    io::{Read as _, Write as _},
    sync::Arc,
};

use anyhow::Context as _;
use clap::Parser;
use tiny_http::{Header, Method, Response, Server};

#[derive(Debug, Parser)]
#[command(
    name = "xdt-service-health",
    version,
    about = "Sample HTTP service answering /healthz"
)]
struct Args {
    /// Address to listen on (`[::]:8081` takes IPv4 and IPv6).
    #[arg(
        long,
        env = "XDT_SERVICE_LISTEN",
        default_value = "[::]:8081",
        value_name = "ADDR:PORT"
    )]
    listen: String,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

fn main() {
    xdt_clidoc::generate_if_asked(<Args as clap::CommandFactory>::command, "8");
    if let Err(e) = run(&Args::parse()) {
        eprintln!("service-health: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let server = Server::http(&args.listen)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = server.server_addr().to_ip().context("not an IP listener")?;
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    xdt_systemd::notify::Notifier::new().ready(&format!("listening on {addr}"));
    let server = Arc::new(server);
    let workers: Vec<_> = (0..args.threads.max(1))
        .map(|_| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || serve(&server))
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// Largest body `POST /echo` returns.
const MAX_ECHO: u64 = 16 << 20;

fn serve(server: &Server) {
    let text = Header::from_bytes("Content-Type", "text/plain; charset=utf-8").ok();
    for mut request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        let (status, body): (u16, Vec<u8>) = match (request.method(), path.as_str()) {
            (Method::Get | Method::Head, "/healthz") => (200, b"ok\n".to_vec()),
            (Method::Get | Method::Head, p) if p.starts_with("/echo/") => {
                (200, format!("{p}\n").into_bytes())
            }
            (Method::Post, "/echo") => {
                let mut body = Vec::new();
                match request
                    .as_reader()
                    .take(MAX_ECHO + 1)
                    .read_to_end(&mut body)
                {
                    Ok(n) if n as u64 <= MAX_ECHO => (200, body),
                    Ok(_) => (413, b"body larger than 16 MiB\n".to_vec()),
                    Err(_) => (400, b"unreadable body\n".to_vec()),
                }
            }
            _ => (404, b"not found\n".to_vec()),
        };
        let mut response = Response::from_data(body).with_status_code(status);
        if let Some(h) = &text {
            response.add_header(h.clone());
        }
        // A client that went away is not our problem.
        let _ = request.respond(response);
    }
}
