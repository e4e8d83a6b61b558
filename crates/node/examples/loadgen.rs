//! A small closed-loop HTTP/1.1 load generator for benchmarking a node over loopback: `conns` keep-alive
//! connections each send the same POST back to back for `secs` seconds; prints JSON with requests/s and
//! latency percentiles. Plain blocking sockets keep the generator's own CPU cost low.
//!
//!     cargo run --release -p verity-node --example loadgen -- <host:port> <path> <body-file> [conns] [secs]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn one(reader: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(status)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: loadgen <host:port> <path> <body-file> [conns] [secs]");
        std::process::exit(2);
    }
    let (addr, path) = (args[1].clone(), args[2].clone());
    let body = std::fs::read(&args[3]).unwrap_or_else(|e| {
        eprintln!("cannot read {}: {e}", args[3]);
        std::process::exit(2)
    });
    let conns: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(4);
    let secs: u64 = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let results: Vec<(Vec<u32>, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..conns)
            .map(|_| {
                let (req, addr) = (&req, &addr);
                s.spawn(move || {
                    let mut lat = Vec::new();
                    let mut errors = 0;
                    let Ok(stream) = TcpStream::connect(addr) else {
                        return (lat, 1);
                    };
                    let _ = stream.set_nodelay(true);
                    let mut w = match stream.try_clone() {
                        Ok(w) => w,
                        Err(_) => return (lat, 1),
                    };
                    let mut r = BufReader::new(stream);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if w.write_all(req).is_err() {
                            errors += 1;
                            break;
                        }
                        match one(&mut r) {
                            Ok(200) => lat.push(t.elapsed().as_micros() as u32),
                            Ok(_) => errors += 1,
                            Err(_) => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut all: Vec<u32> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let errors: usize = results.iter().map(|r| r.1).sum();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"seconds\": {elapsed:.3}, \"rps\": {:.1}, \"p50_us\": {}, \"p99_us\": {}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}
