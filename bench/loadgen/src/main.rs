//! vb-loadgen: drives N simultaneous simulated phone calls through a Twilio<->Realtime bridge.
//!
//! One process plays both peers on one monotonic clock: a Twilio Media Streams caller per call
//! (20 ms µ-law frames in real time, real-time playout with marks and `clear` as Twilio does
//! them) and an OpenAI Realtime (GA) server for the bridge to connect to (scripted answers,
//! VAD driven by the caller's script). Audio bytes carry tags (call, sequence, send time), so
//! latency, loss, duplication, reordering and stale audio are measured from the audio itself.
//! Results go to stdout as one JSON object; progress lines go to stderr.

mod wire;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use wire::{b64_decode, b64_encode, bool_field, int_field, is_timeout, str_field, Msg, Ws};

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_us() -> u64 {
    EPOCH.get().unwrap().elapsed().as_micros() as u64
}

const FRAME_BYTES: usize = 160; // 20 ms of µ-law
const CALLER_MAGIC: [u8; 2] = [0xA5, 0x5A];
const MODEL_MAGIC: [u8; 2] = [0xC3, 0x3C];

#[derive(Clone)]
struct Opts {
    calls: usize,
    ramp_s: f64,
    steady_s: f64,
    call_s: f64,
    bridge: String,       // host:port of the bridge's HTTP/WS listener (the first of `bridges`)
    bridges: Vec<String>, // --bridge A,B: several instances, calls spread over them as a balancer would
    cross_every: u32,     // with several bridges: every K-th call's stream goes to another instance than its webhook
    stream_path: String,  // when no webhook: the media stream path
    public_url: String,   // origin the bridge signs against (webhook URLs)
    twilio_token: String, // sign requests when set
    webhook: bool,        // POST /incoming-call first (token, pre-warm)
    realtime_listen: String,
    delta_ms: u32,
    pace: f64, // model generation speed vs real time
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        calls: 10, ramp_s: 5.0, steady_s: 60.0, call_s: 40.0, bridge: "127.0.0.1:8080".into(), bridges: vec![], cross_every: 0,
        stream_path: "/media-stream".into(), public_url: String::new(), twilio_token: String::new(),
        webhook: true, realtime_listen: "127.0.0.1:0".into(), delta_ms: 100, pace: 1.25,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--calls" => o.calls = v.parse().expect("--calls N"),
            "--ramp-s" => o.ramp_s = v.parse().expect("--ramp-s S"),
            "--steady-s" => o.steady_s = v.parse().expect("--steady-s S"),
            "--call-s" => o.call_s = v.parse().expect("--call-s S"),
            "--bridge" => o.bridges = v.split(',').filter(|b| !b.is_empty()).map(String::from).collect(),
            "--cross-every" => o.cross_every = v.parse().expect("--cross-every K"),
            "--stream-path" => o.stream_path = v,
            "--public-url" => o.public_url = v,
            "--twilio-token" => o.twilio_token = v,
            "--no-webhook" => {
                o.webhook = false;
                i += 1;
                continue;
            }
            "--realtime-listen" => o.realtime_listen = v,
            "--delta-ms" => o.delta_ms = v.parse().expect("--delta-ms MS"),
            "--pace" => o.pace = v.parse().expect("--pace X"),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    if o.bridges.is_empty() {
        o.bridges.push(o.bridge.clone());
    }
    o.bridge = o.bridges[0].clone();
    if o.public_url.is_empty() {
        o.public_url = format!("http://{}", o.bridge);
    }
    o
}

// -- shared records (flushed by each thread when it ends) --------------------------------------

#[derive(Default)]
struct ConnRec {
    first_create_at: Option<u64>,
    first_delta_at: Option<u64>,
    last_ss_at: Option<u64>,
    closed_at: Option<u64>,
    call: Option<u32>,
    seen: Vec<bool>,
    dup: u64,
    reordered: u64,
    wrong_call: u64,
    cancel_lat: Vec<(u64, u64)>,
    truncate_lat: Vec<(u64, u64)>,
    inbound_lat: Vec<(u64, u64)>,
    truncations: Vec<(u16, i64)>,        // (response, audio_end_ms)
    responses: Vec<(u16, Vec<u64>, Option<u64>)>, // (response, send time per delta, speech_started during it)
}

#[derive(Default)]
struct CallRec {
    conn: Option<u32>,
    webhook_at: usize, // index in `bridges` of the instance that got the webhook
    stream_at: usize,  // ... and of the one that got the media stream
    start_at: u64,
    hangup_at: u64,
    frames_sent: u32,
    cutoff_seq: u32,
    greeting_share: Option<(u64, u64)>,
    outbound_lat: Vec<(u64, u64)>,
    clear_lat: Vec<(u64, u64)>,
    played_at_clear: Vec<(u32, u16, f64, u64)>, // (conn, response, ms played, clear time)
    received: HashMap<(u32, u16), Vec<(u32, bool)>>, // block index, arrived after a clear of it
    wrong_call_blocks: u64,
    corrupt_blocks: u64,
    send_lag: Vec<u64>,
    clears: u32,
    error: Option<String>,
}

struct Shared {
    opts: Opts,
    conns: Mutex<HashMap<u32, ConnRec>>,
    live_ss: Mutex<HashMap<u32, u64>>, // conn -> last speech_started sent (read by the caller)
    calls: Mutex<Vec<(u32, CallRec)>>,
    stop: AtomicBool,
    next_call: AtomicU32,
    open_conns: AtomicU32,
    steady_from: u64,
    steady_to: u64,
}

// -- the Realtime peer -----------------------------------------------------------------------

struct Resp {
    no: u16,
    deltas_total: u32,
    sent: Vec<u64>,
    next_at: u64,
    stall_after: Option<u32>,
    stall_us: u64,
    ss_at: Option<u64>,
}

fn realtime_conn(sh: Arc<Shared>, sock: TcpStream, conn: u32) {
    let mut rec = ConnRec::default();
    let res = realtime_conn_inner(&sh, sock, conn, &mut rec);
    rec.closed_at = Some(now_us());
    if let Err(e) = res {
        if !sh.stop.load(Ordering::Relaxed) {
            eprintln!("realtime conn {conn}: {e}");
        }
    }
    sh.live_ss.lock().unwrap().remove(&conn);
    sh.conns.lock().unwrap().insert(conn, rec);
    sh.open_conns.fetch_sub(1, Ordering::Relaxed);
}

fn read_http_head(sock: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof in http head"));
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_string();
            return Ok((head, buf[p + 4..].to_vec()));
        }
        if buf.len() > 65536 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "http head too long"));
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim().eq_ignore_ascii_case(name) { Some(v.trim()) } else { None }
    })
}

fn realtime_conn_inner(sh: &Shared, mut sock: TcpStream, conn: u32, rec: &mut ConnRec) -> std::io::Result<()> {
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (head, rest) = read_http_head(&mut sock)?;
    let key = header(&head, "sec-websocket-key").unwrap_or("").to_string();
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        wire::ws_accept(&key)
    );
    sock.write_all(resp.as_bytes())?;
    let mut ws = Ws::new(sock, false, rest, conn as u64 * 7919);
    let ev = |kind: &str, body: &str| -> String { format!("{{\"type\":\"{kind}\",\"event_id\":\"ev_{}\"{body}}}", now_us()) };
    ws.send_text(ev("session.created", &format!(",\"session\":{{\"id\":\"sess_{conn}\",\"type\":\"realtime\"}}")).as_bytes())?;
    let delta_ms = sh.opts.delta_ms;
    let blocks_per_delta = (delta_ms as usize * 8 / FRAME_BYTES).max(1);
    let delta_every_us = (delta_ms as f64 * 1000.0 / sh.opts.pace) as u64;
    let mut resp_no: u16 = 0;
    let mut active: Option<Resp> = None;
    let mut speaking = false;
    let mut respond_at: Option<u64> = None;
    let mut audio_ms: u64 = 0;
    let mut user_item = 0u32;
    let mut last_ss: Option<u64> = None;
    let mut max_seq: i64 = -1;
    // turn_detection.interrupt_response: true unless the session turns it off (the service's default).
    let mut interrupt_response = true;
    let mut payload = vec![0u8; FRAME_BYTES * blocks_per_delta];

    let start_response = |resp_no: &mut u16, ws: &mut Ws, rec: &mut ConnRec, greeting: bool| -> std::io::Result<Resp> {
        *resp_no += 1;
        let no = *resp_no;
        let now = now_us();
        if rec.first_create_at.is_none() {
            rec.first_create_at = Some(now);
        }
        ws.send_text(ev("response.created", &format!(",\"response\":{{\"id\":\"resp_{conn}_{no}\",\"object\":\"realtime.response\",\"status\":\"in_progress\",\"output\":[]}}")).as_bytes())?;
        ws.send_text(ev("response.output_item.added", &format!(",\"response_id\":\"resp_{conn}_{no}\",\"output_index\":0,\"item\":{{\"id\":\"item_{conn}_{no}\",\"type\":\"message\",\"role\":\"assistant\",\"status\":\"in_progress\",\"content\":[]}}")).as_bytes())?;
        let secs = if greeting { 3.0 } else { 2.5 + (no % 4) as f64 * 0.5 };
        Ok(Resp {
            no,
            deltas_total: (secs * 1000.0 / delta_ms as f64) as u32,
            sent: Vec::new(),
            next_at: now,
            // Every third answer stalls after 8 deltas: alternately for 1.5 s (the caller's buffer runs
            // dry and the caller may talk into the pause) and for 0.3 s (a short underrun, then the
            // answer goes on and may be cut after it).
            stall_after: if no % 3 == 0 { Some(8) } else { None },
            stall_us: if no % 2 == 0 { 300_000 } else { 1_500_000 },
            ss_at: None,
        })
    };

    loop {
        // Model audio due now.
        let now = now_us();
        if let Some(r) = active.as_mut() {
            while r.next_at <= now_us() && (r.sent.len() as u32) < r.deltas_total {
                send_delta(&mut ws, conn, r, &mut payload, blocks_per_delta)?;
                if rec.first_delta_at.is_none() {
                    rec.first_delta_at = r.sent.first().copied();
                }
                let n = r.sent.len() as u32;
                r.next_at += delta_every_us;
                if Some(n) == r.stall_after {
                    r.next_at += r.stall_us; // the model stalls mid-answer
                }
            }
            if r.sent.len() as u32 >= r.deltas_total {
                let r = active.take().unwrap();
                finish_response(&mut ws, conn, &r, "completed", None)?;
                rec.responses.push((r.no, r.sent, r.ss_at));
            }
        }
        if let Some(at) = respond_at {
            if at <= now && active.is_none() {
                respond_at = None;
                active = Some(start_response(&mut resp_no, &mut ws, rec, false)?);
                continue;
            }
        }
        // Wait for client events until the next thing is due.
        let mut due = now + 200_000;
        if let Some(r) = &active {
            due = due.min(r.next_at);
        }
        if let Some(at) = respond_at {
            due = due.min(at);
        }
        let wait = due.saturating_sub(now_us()).max(50);
        loop {
            match ws.next_buffered()? {
                None => break,
                Some(Msg::Close) => return Ok(()),
                Some(Msg::Text(t)) => {
                    let kind = str_field(&t, "type").unwrap_or(b"");
                    match kind {
                        b"input_audio_buffer.append" => {
                            let now = now_us();
                            let audio = str_field(&t, "audio").and_then(b64_decode).unwrap_or_default();
                            audio_ms += audio.len() as u64 / 8;
                            if audio.len() < 19 || audio[..2] != CALLER_MAGIC {
                                continue;
                            }
                            let call = u32::from_le_bytes(audio[2..6].try_into().unwrap());
                            let seq = u32::from_le_bytes(audio[6..10].try_into().unwrap());
                            let flag = audio[10];
                            let sent = u64::from_le_bytes(audio[11..19].try_into().unwrap());
                            rec.inbound_lat.push((now, now.saturating_sub(sent)));
                            match rec.call {
                                None => rec.call = Some(call),
                                Some(c) if c != call => {
                                    rec.wrong_call += 1;
                                    continue;
                                }
                                _ => {}
                            }
                            let s = seq as usize;
                            if rec.seen.len() <= s {
                                rec.seen.resize(s + 1, false);
                            }
                            if rec.seen[s] {
                                rec.dup += 1;
                            } else if (seq as i64) < max_seq {
                                rec.reordered += 1;
                            }
                            rec.seen[s] = true;
                            max_seq = max_seq.max(seq as i64);
                            // Server VAD, driven by the caller script's speech flag.
                            if flag == 1 && !speaking {
                                speaking = true;
                                user_item += 1;
                                respond_at = None;
                                let ss = now_us();
                                last_ss = Some(ss);
                                sh.live_ss.lock().unwrap().insert(conn, ss);
                                rec.last_ss_at = Some(ss);
                                ws.send_text(ev("input_audio_buffer.speech_started", &format!(",\"audio_start_ms\":{},\"item_id\":\"user_{conn}_{user_item}\"", audio_ms.saturating_sub(20))).as_bytes())?;
                                if let Some(r) = active.as_mut() {
                                    if r.ss_at.is_none() {
                                        r.ss_at = Some(ss);
                                    }
                                    // Deltas already in flight keep arriving after speech_started.
                                    for _ in 0..2 {
                                        if (r.sent.len() as u32) < r.deltas_total {
                                            send_delta(&mut ws, conn, r, &mut payload, blocks_per_delta)?;
                                        }
                                    }
                                }
                                // With interrupt_response the service cancels the answer itself.
                                if interrupt_response {
                                    if let Some(r) = active.take() {
                                        finish_response(&mut ws, conn, &r, "cancelled", Some("turn_detected"))?;
                                        rec.responses.push((r.no, r.sent, r.ss_at));
                                    }
                                }
                            } else if flag == 0 && speaking {
                                speaking = false;
                                ws.send_text(ev("input_audio_buffer.speech_stopped", &format!(",\"audio_end_ms\":{audio_ms},\"item_id\":\"user_{conn}_{user_item}\"")).as_bytes())?;
                                respond_at = Some(now_us() + 300_000);
                            }
                        }
                        b"session.update" => {
                            if let Some(b) = bool_field(&t, "interrupt_response") {
                                interrupt_response = b;
                            }
                            ws.send_text(ev("session.updated", ",\"session\":{\"type\":\"realtime\",\"output_modalities\":[\"audio\"]}").as_bytes())?;
                        }
                        b"response.create" => {
                            if active.is_some() {
                                ws.send_text(ev("error", ",\"error\":{\"type\":\"invalid_request_error\",\"code\":\"conversation_already_has_active_response\",\"message\":\"active response\"}").as_bytes())?;
                            } else {
                                let greeting = resp_no == 0;
                                active = Some(start_response(&mut resp_no, &mut ws, rec, greeting)?);
                            }
                        }
                        b"response.cancel" => {
                            let now = now_us();
                            if let Some(ss) = last_ss {
                                rec.cancel_lat.push((now, now - ss));
                            }
                            if let Some(r) = active.take() {
                                finish_response(&mut ws, conn, &r, "cancelled", Some("client_cancelled"))?;
                                rec.responses.push((r.no, r.sent, r.ss_at));
                            } else {
                                ws.send_text(ev("error", ",\"error\":{\"type\":\"invalid_request_error\",\"code\":\"response_cancel_not_active\",\"message\":\"no active response\"}").as_bytes())?;
                            }
                        }
                        b"conversation.item.truncate" => {
                            let now = now_us();
                            if let Some(ss) = last_ss {
                                rec.truncate_lat.push((now, now - ss));
                            }
                            let item = str_field(&t, "item_id").unwrap_or(b"");
                            let end = int_field(&t, "audio_end_ms").unwrap_or(-1);
                            let no = std::str::from_utf8(item).ok().and_then(|s| s.rsplit('_').next()).and_then(|s| s.parse::<u16>().ok());
                            if let Some(no) = no {
                                rec.truncations.push((no, end));
                            }
                            ws.send_text(ev("conversation.item.truncated", &format!(",\"item_id\":\"{}\",\"content_index\":0,\"audio_end_ms\":{end}", String::from_utf8_lossy(item))).as_bytes())?;
                        }
                        _ => {}
                    }
                }
            }
        }
        match ws.fill_within(wait) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

fn send_delta(ws: &mut Ws, conn: u32, r: &mut Resp, payload: &mut [u8], blocks: usize) -> std::io::Result<()> {
    let t = now_us();
    let d = r.sent.len() as u32;
    for b in 0..blocks {
        let blk = &mut payload[b * FRAME_BYTES..(b + 1) * FRAME_BYTES];
        blk.fill(0x7F);
        blk[..2].copy_from_slice(&MODEL_MAGIC);
        blk[2..6].copy_from_slice(&conn.to_le_bytes());
        blk[6..8].copy_from_slice(&r.no.to_le_bytes());
        blk[8..12].copy_from_slice(&(d * blocks as u32 + b as u32).to_le_bytes());
        blk[12..20].copy_from_slice(&t.to_le_bytes());
    }
    let msg = format!(
        "{{\"type\":\"response.output_audio.delta\",\"event_id\":\"ev_{t}\",\"response_id\":\"resp_{conn}_{}\",\"item_id\":\"item_{conn}_{}\",\"output_index\":0,\"content_index\":0,\"delta\":\"{}\"}}",
        r.no, r.no, b64_encode(payload)
    );
    r.sent.push(t);
    ws.send_text(msg.as_bytes())
}

fn finish_response(ws: &mut Ws, conn: u32, r: &Resp, status: &str, reason: Option<&str>) -> std::io::Result<()> {
    let no = r.no;
    if status == "completed" {
        ws.send_text(format!("{{\"type\":\"response.output_audio.done\",\"event_id\":\"ev_d{no}\",\"response_id\":\"resp_{conn}_{no}\",\"item_id\":\"item_{conn}_{no}\",\"output_index\":0,\"content_index\":0}}").as_bytes())?;
    }
    let details = match reason {
        Some(r) => format!("{{\"type\":\"{status}\",\"reason\":\"{r}\"}}"),
        None => "null".into(),
    };
    ws.send_text(format!("{{\"type\":\"response.done\",\"event_id\":\"ev_r{no}\",\"response\":{{\"id\":\"resp_{conn}_{no}\",\"object\":\"realtime.response\",\"status\":\"{status}\",\"status_details\":{details},\"output\":[]}}}}").as_bytes())
}

// -- the Twilio caller -----------------------------------------------------------------------

fn http_post_form(sh: &Shared, bridge: &str, path: &str, form: &[(&str, String)]) -> std::io::Result<String> {
    let body: String = form.iter().map(|(k, v)| format!("{}={}", k, urlenc(v))).collect::<Vec<_>>().join("&");
    let mut extra = String::new();
    if !sh.opts.twilio_token.is_empty() {
        let mut sorted: Vec<_> = form.to_vec();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut s = format!("{}{}", sh.opts.public_url.trim_end_matches('/'), path);
        for (k, v) in sorted {
            s.push_str(k);
            s.push_str(&v);
        }
        extra = format!("X-Twilio-Signature: {}\r\n", b64_encode(&wire::hmac_sha1(sh.opts.twilio_token.as_bytes(), s.as_bytes())));
    }
    let mut sock = TcpStream::connect(bridge)?;
    sock.set_read_timeout(Some(Duration::from_secs(15)))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        bridge, body.len()
    );
    sock.write_all(req.as_bytes())?;
    // Read the head, then exactly content-length bytes (servers may keep the socket open).
    let (head, mut body_bytes) = read_http_head(&mut sock)?;
    let want: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut tmp = [0u8; 8192];
    while body_bytes.len() < want {
        let n = sock.read(&mut tmp)?;
        if n == 0 {
            break;
        }
        body_bytes.extend_from_slice(&tmp[..n]);
    }
    let text = format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&body_bytes));
    if !text.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::new(std::io::ErrorKind::Other, format!("webhook answered {}", text.lines().next().unwrap_or(""))));
    }
    Ok(text)
}

fn urlenc(s: &str) -> String {
    s.bytes().map(|b| match b {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
        _ => format!("%{:02X}", b),
    }).collect()
}

fn attr(xml: &str, after: &str, name: &str) -> Option<String> {
    let at = xml.find(after)?;
    let rest = &xml[at..];
    let key = format!("{name}=\"");
    let s = rest.find(&key)? + key.len();
    let e = rest[s..].find('"')? + s;
    Some(rest[s..e].replace("&amp;", "&"))
}

struct Seg {
    key: (u32, u16),
    start: u64,
    end: u64,
}

fn caller_slot(sh: Arc<Shared>, slot: usize, first_at: u64, end_at: u64) {
    let mut t = first_at;
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        let now = now_us();
        if t > now {
            thread::sleep(Duration::from_micros(t - now));
        }
        if now_us() >= end_at {
            break;
        }
        let id = sh.next_call.fetch_add(1, Ordering::Relaxed);
        // Call lengths vary a little so that slots do not hang up in step.
        let len_us = (sh.opts.call_s * 1e6 * (0.85 + 0.3 * ((slot as u64 * 7 + n * 13) % 10) as f64 / 10.0)) as u64;
        let mut rec = CallRec::default();
        if let Err(e) = run_caller(&sh, id, (now_us() + len_us).min(end_at), &mut rec) {
            rec.error = Some(e.to_string());
            if !sh.stop.load(Ordering::Relaxed) {
                eprintln!("call {id}: {e}");
            }
            thread::sleep(Duration::from_millis(200));
        }
        sh.calls.lock().unwrap().push((id, rec));
        n += 1;
        t = now_us();
    }
}

fn run_caller(sh: &Shared, id: u32, hangup_at: u64, rec: &mut CallRec) -> std::io::Result<()> {
    let call_sid = format!("CA{:032x}", id as u128 + 0xb0b0_0000);
    let stream_sid = format!("MZ{:032x}", id as u128 + 0x5eed_0000);
    let mut params = vec![("CallSid", call_sid.clone())];
    // Several instances: the webhook goes round-robin; every K-th pair of calls sends its stream
    // to the other instance (a balancer without affinity may do that), symmetric between them.
    let nb = sh.opts.bridges.len();
    rec.webhook_at = id as usize % nb;
    let crossed = nb > 1 && sh.opts.cross_every > 0 && (id as usize / nb) % sh.opts.cross_every as usize == 0;
    rec.stream_at = if crossed { (rec.webhook_at + 1) % nb } else { rec.webhook_at };
    let (hook_bridge, stream_bridge) = (&sh.opts.bridges[rec.webhook_at], &sh.opts.bridges[rec.stream_at]);
    let mut stream_url = format!("wss://{}{}", stream_bridge, sh.opts.stream_path);
    if sh.opts.webhook {
        let form = vec![
            ("AccountSid", "AC0000000000000000000000000000bench".to_string()),
            ("CallSid", call_sid.clone()),
            ("From", format!("+1555{:07}", id % 10_000_000)),
            ("To", "+15550001111".to_string()),
            ("Direction", "inbound".to_string()),
            ("CallStatus", "ringing".to_string()),
        ];
        let twiml = http_post_form(sh, hook_bridge, "/incoming-call", &form)?;
        stream_url = attr(&twiml, "<Stream", "url").unwrap_or(stream_url);
        params.clear();
        let mut rest = twiml.as_str();
        while let Some(p) = rest.find("<Parameter") {
            rest = &rest[p + 10..];
            if let (Some(k), Some(v)) = (attr(rest, "", "name"), attr(rest, "", "value")) {
                params.push((Box::leak(k.into_boxed_str()), v));
            }
        }
    }
    let path = stream_url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or(sh.opts.stream_path.clone());
    let mut sock = TcpStream::connect(stream_bridge)?;
    sock.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut sig = String::new();
    if !sh.opts.twilio_token.is_empty() {
        sig = format!("X-Twilio-Signature: {}\r\n", b64_encode(&wire::hmac_sha1(sh.opts.twilio_token.as_bytes(), stream_url.as_bytes())));
    }
    let key = b64_encode(&(id as u128 * 0x9E37_79B9_7F4A_7C15).to_le_bytes());
    let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{sig}\r\n", stream_bridge);
    sock.write_all(req.as_bytes())?;
    let (head, rest) = read_http_head(&mut sock)?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::new(std::io::ErrorKind::Other, format!("upgrade refused: {}", head.lines().next().unwrap_or(""))));
    }
    let mut ws = Ws::new(sock, true, rest, id as u64 * 104729 + 1);
    ws.send_text(b"{\"event\":\"connected\",\"protocol\":\"Call\",\"version\":\"1.0.0\"}")?;
    let custom: Vec<String> = params.iter().map(|(k, v)| format!("\"{}\":\"{}\"", k, v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    let mut seqno: u64 = 1;
    let start = format!(
        "{{\"event\":\"start\",\"sequenceNumber\":\"{seqno}\",\"streamSid\":\"{stream_sid}\",\"start\":{{\"accountSid\":\"AC0000000000000000000000000000bench\",\"streamSid\":\"{stream_sid}\",\"callSid\":\"{call_sid}\",\"tracks\":[\"inbound\"],\"customParameters\":{{{}}},\"mediaFormat\":{{\"encoding\":\"audio/x-mulaw\",\"sampleRate\":8000,\"channels\":1}}}}}}",
        custom.join(",")
    );
    rec.start_at = now_us();
    ws.send_text(start.as_bytes())?;

    let mut frame = [0xFFu8; FRAME_BYTES];
    let mut chunk: u32 = 0;
    let mut next_frame = now_us();
    let t0 = next_frame;
    // Playout (Twilio's buffer), marks, and the caller's script.
    let mut segs: VecDeque<Seg> = VecDeque::new();
    let mut play_end: u64 = 0;
    let mut marks: VecDeque<(Vec<u8>, u64)> = VecDeque::new();
    let mut acc: Vec<u8> = Vec::new();
    let mut cleared: Vec<(u32, u16)> = Vec::new();
    let mut cur_resp: Option<(u32, u16)> = None;
    let mut last_delta: Option<(u32, u16, u32)> = None;
    let mut speak_from: Option<u64> = None;
    let mut speak_until: u64 = 0;
    let mut last_audio_at: u64 = 0;
    let mut last_speech_end: u64 = 0;
    let mut turn: u32 = 0;
    let blocks_per_delta = (sh.opts.delta_ms as usize * 8 / FRAME_BYTES).max(1) as u32;
    loop {
        let now = now_us();
        if now >= hangup_at || sh.stop.load(Ordering::Relaxed) {
            break;
        }
        // Caller audio: one 20 ms frame on every tick, tagged.
        while next_frame <= now {
            let speech = now >= speak_from.unwrap_or(u64::MAX) && now < speak_until;
            if let Some(f) = speak_from {
                if now >= speak_until && f < speak_until {
                    speak_from = None;
                    last_speech_end = now;
                }
            }
            let sent = now_us();
            rec.send_lag.push(sent - next_frame);
            frame[..2].copy_from_slice(&CALLER_MAGIC);
            frame[2..6].copy_from_slice(&id.to_le_bytes());
            frame[6..10].copy_from_slice(&chunk.to_le_bytes());
            frame[10] = speech as u8;
            frame[11..19].copy_from_slice(&sent.to_le_bytes());
            seqno += 1;
            let msg = format!(
                "{{\"event\":\"media\",\"sequenceNumber\":\"{seqno}\",\"streamSid\":\"{stream_sid}\",\"media\":{{\"track\":\"inbound\",\"chunk\":\"{}\",\"timestamp\":\"{}\",\"payload\":\"{}\"}}}}",
                chunk + 1, (next_frame - t0) / 1000, b64_encode(&frame)
            );
            ws.send_text(msg.as_bytes())?;
            chunk += 1;
            rec.frames_sent = chunk;
            if sent + 100_000 <= hangup_at {
                rec.cutoff_seq = chunk;
            }
            next_frame += 20_000;
        }
        // Marks whose audio has played.
        while let Some((name, due)) = marks.front() {
            if *due > now {
                break;
            }
            seqno += 1;
            let m = format!("{{\"event\":\"mark\",\"sequenceNumber\":\"{seqno}\",\"streamSid\":\"{stream_sid}\",\"mark\":{{\"name\":\"{}\"}}}}", String::from_utf8_lossy(name));
            marks.pop_front();
            ws.send_text(m.as_bytes())?;
        }
        // The script: talk over every other answer, let the others finish.
        if speak_from.is_none() && now > last_speech_end + 800_000 {
            if let Some(_) = cur_resp {
                let playing = play_end > now;
                // Audio of the current answer played so far (a model stall does not count).
                let played: u64 = segs.iter().filter(|s| Some(s.key) == cur_resp)
                    .map(|s| now.min(s.end).saturating_sub(s.start)).sum();
                if turn % 2 == 1 && playing && played >= 600_000 + (id as u64 * 37 + turn as u64 * 101) % 1000 * 1000 {
                    speak_from = Some(now);
                    speak_until = now + 1_200_000;
                    turn += 1;
                    cur_resp = None;
                } else if !playing && now > play_end + 400_000 && now > last_audio_at + 400_000 {
                    speak_from = Some(now);
                    speak_until = now + 1_200_000;
                    turn += 1;
                    cur_resp = None;
                }
            } else if now > last_speech_end.max(last_audio_at).max(rec.start_at) + 5_000_000 {
                speak_from = Some(now); // nobody answered: say something again
                speak_until = now + 1_200_000;
                turn += 1;
            }
        }
        let mut due = next_frame.min(hangup_at);
        if let Some((_, d)) = marks.front() {
            due = due.min(*d);
        }
        let wait = due.saturating_sub(now_us()).max(50);
        match ws.fill_within(wait) {
            Ok(true) => {}
            Ok(false) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "bridge closed the stream")),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
        while let Some(m) = ws.next_buffered()? {
            let t = match m {
                Msg::Close => return Err(std::io::Error::new(std::io::ErrorKind::Other, "bridge closed the stream")),
                Msg::Text(t) => t,
            };
            let now = now_us();
            match str_field(&t, "event").unwrap_or(b"") {
                b"media" => {
                    let data = str_field(&t, "payload").and_then(b64_decode).unwrap_or_default();
                    let start = play_end.max(now);
                    let end = start + data.len() as u64 * 125;
                    play_end = end;
                    last_audio_at = now;
                    acc.extend_from_slice(&data);
                    let mut key0: Option<(u32, u16)> = None;
                    let mut off = 0;
                    while acc.len() - off >= FRAME_BYTES {
                        let b = &acc[off..off + FRAME_BYTES];
                        off += FRAME_BYTES;
                        if b[..2] != MODEL_MAGIC {
                            rec.corrupt_blocks += 1;
                            continue;
                        }
                        let conn = u32::from_le_bytes(b[2..6].try_into().unwrap());
                        let resp = u16::from_le_bytes(b[6..8].try_into().unwrap());
                        let blk = u32::from_le_bytes(b[8..12].try_into().unwrap());
                        let tsent = u64::from_le_bytes(b[12..20].try_into().unwrap());
                        match rec.conn {
                            None => {
                                rec.conn = Some(conn);
                            }
                            Some(c) if c != conn => {
                                rec.wrong_call_blocks += 1;
                                continue;
                            }
                            _ => {}
                        }
                        let d = blk / blocks_per_delta;
                        if last_delta != Some((conn, resp, d)) {
                            last_delta = Some((conn, resp, d));
                            rec.outbound_lat.push((now, now.saturating_sub(tsent)));
                            if rec.greeting_share.is_none() {
                                rec.greeting_share = Some((now, tsent));
                            }
                        }
                        let stale = cleared.contains(&(conn, resp));
                        rec.received.entry((conn, resp)).or_default().push((blk, stale));
                        if key0.is_none() {
                            key0 = Some((conn, resp));
                        }
                        if cur_resp != Some((conn, resp)) && !stale && speak_from.is_none() {
                            cur_resp = Some((conn, resp));
                        }
                    }
                    acc.drain(..off);
                    if let Some(k) = key0 {
                        segs.push_back(Seg { key: k, start, end });
                    }
                    while segs.len() > 400 {
                        segs.pop_front();
                    }
                }
                b"mark" => {
                    let name = str_field(&t, "name").unwrap_or(b"").to_vec();
                    marks.push_back((name, play_end.max(now)));
                }
                b"clear" => {
                    rec.clears += 1;
                    if let Some(c) = rec.conn {
                        if let Some(ss) = sh.live_ss.lock().unwrap().get(&c) {
                            rec.clear_lat.push((now, now.saturating_sub(*ss)));
                        }
                    }
                    let mut played: HashMap<(u32, u16), f64> = HashMap::new();
                    for s in &segs {
                        let p = now.min(s.end).saturating_sub(s.start) as f64 / 1000.0;
                        *played.entry(s.key).or_default() += p;
                    }
                    for (k, ms) in played {
                        if !cleared.contains(&k) {
                            cleared.push(k);
                            rec.played_at_clear.push((k.0, k.1, ms, now));
                        }
                    }
                    segs.retain(|s| s.start < now);
                    for s in segs.iter_mut() {
                        s.end = s.end.min(now);
                    }
                    play_end = now;
                    for m in marks.iter_mut() {
                        m.1 = now; // a clear echoes every pending mark at once
                    }
                    acc.clear();
                }
                _ => {}
            }
        }
    }
    // Hang up as Twilio does: stop, then close.
    rec.hangup_at = now_us();
    seqno += 1;
    let stop = format!("{{\"event\":\"stop\",\"sequenceNumber\":\"{seqno}\",\"streamSid\":\"{stream_sid}\",\"stop\":{{\"accountSid\":\"AC0000000000000000000000000000bench\",\"callSid\":\"{call_sid}\"}}}}");
    let _ = ws.send_text(stop.as_bytes());
    ws.close();
    ws.sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let deadline = now_us() + 2_000_000;
    while now_us() < deadline {
        match ws.fill() {
            Ok(true) => while let Ok(Some(_)) = ws.next_buffered() {},
            _ => break,
        }
    }
    Ok(())
}

// -- statistics ------------------------------------------------------------------------------

fn summary(v: &mut Vec<u64>) -> String {
    if v.is_empty() {
        return "{\"n\":0}".into();
    }
    v.sort_unstable();
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    format!("{{\"n\":{},\"p50\":{:.3},\"p99\":{:.3},\"max\":{:.3}}}", v.len(), q(0.5), q(0.99), *v.last().unwrap() as f64 / 1000.0)
}

fn summary_f(v: &mut Vec<f64>) -> String {
    if v.is_empty() {
        return "{\"n\":0}".into();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let maxabs = v.iter().fold(0f64, |m, x| m.max(x.abs()));
    format!("{{\"n\":{},\"min\":{:.1},\"p50\":{:.1},\"p99\":{:.1},\"max\":{:.1},\"max_abs\":{:.1}}}", v.len(), v[0], q(0.5), q(0.99), *v.last().unwrap(), maxabs)
}

fn main() {
    EPOCH.set(Instant::now()).unwrap();
    let opts = parse_opts();
    let listener = TcpListener::bind(&opts.realtime_listen).expect("bind the Realtime peer");
    let rt_addr = listener.local_addr().unwrap();
    let ramp_us = (opts.ramp_s * 1e6) as u64;
    let steady_to = ramp_us + (opts.steady_s * 1e6) as u64;
    let sh = Arc::new(Shared {
        opts: opts.clone(), conns: Mutex::new(HashMap::new()), live_ss: Mutex::new(HashMap::new()),
        calls: Mutex::new(Vec::new()), stop: AtomicBool::new(false), next_call: AtomicU32::new(1),
        open_conns: AtomicU32::new(0), steady_from: ramp_us + 2_000_000, steady_to,
    });
    eprintln!("realtime peer listening on ws://{rt_addr}/v1/realtime");
    println!("{{\"realtime_url\":\"ws://{rt_addr}/v1/realtime\"}}");
    std::io::stdout().flush().ok();
    // Wait for the go line on stdin (the runner starts the bridge pointed at us first).
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).ok();
    let start_at = now_us();
    let sh2 = sh.clone();
    let rt_threads: Arc<Mutex<Vec<thread::JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
    let rt_threads2 = rt_threads.clone();
    listener.set_nonblocking(true).unwrap();
    let acceptor = thread::spawn(move || {
        let mut conn = 0u32;
        while !sh2.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    conn += 1;
                    sh2.open_conns.fetch_add(1, Ordering::Relaxed);
                    let sh3 = sh2.clone();
                    let c = conn;
                    let h = thread::Builder::new().stack_size(256 * 1024).spawn(move || realtime_conn(sh3, s, c)).unwrap();
                    rt_threads2.lock().unwrap().push(h);
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    let n = opts.calls;
    let mut slots = Vec::new();
    for i in 0..n {
        let sh3 = sh.clone();
        let first = start_at + ramp_us * i as u64 / n.max(1) as u64;
        let end = start_at + steady_to;
        slots.push(thread::Builder::new().stack_size(256 * 1024).spawn(move || caller_slot(sh3, i, first, end)).unwrap());
    }
    eprintln!("{{\"phase\":\"ramp\",\"calls\":{n}}}");
    thread::sleep(Duration::from_micros((start_at + sh.steady_from).saturating_sub(now_us())));
    eprintln!("STEADY_BEGIN");
    thread::sleep(Duration::from_micros((start_at + steady_to).saturating_sub(now_us())));
    eprintln!("STEADY_END");
    for s in slots {
        s.join().ok();
    }
    // Every Realtime socket should close within 1 s of its caller hanging up; wait up to 3 s.
    let deadline = now_us() + 3_000_000;
    while sh.open_conns.load(Ordering::Relaxed) > 0 && now_us() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let still_open = sh.open_conns.load(Ordering::Relaxed);
    sh.stop.store(true, Ordering::Relaxed);
    acceptor.join().ok();
    let hs: Vec<_> = std::mem::take(&mut *rt_threads.lock().unwrap());
    for h in hs {
        if h.is_finished() {
            h.join().ok();
        }
    }
    report(&sh, start_at, still_open);
}

fn report(sh: &Shared, start_at: u64, still_open: u32) {
    let all = stats(sh, start_at, still_open, None);
    let nb = sh.opts.bridges.len();
    if nb < 2 {
        println!("{all}");
        return;
    }
    // Several instances: the same statistics per instance, by where each call's stream went.
    let per: Vec<String> = (0..nb).map(|i| stats(sh, start_at, still_open, Some(i))).collect();
    let crossed = sh.calls.lock().unwrap().iter().filter(|(_, r)| r.webhook_at != r.stream_at).count();
    println!("{},\"calls_crossed\":{crossed},\"instances\":[{}]}}", &all[..all.len() - 1], per.join(","));
}

/// The run's statistics as one JSON object; with `only`, just the calls whose media stream went to
/// that instance (and their Realtime connections).
fn stats(sh: &Shared, start_at: u64, still_open: u32, only: Option<usize>) -> String {
    let from = start_at + sh.steady_from;
    let to = start_at + sh.steady_to;
    let inwin = |t: u64| t >= from && t <= to;
    let conns = sh.conns.lock().unwrap();
    let all_calls = sh.calls.lock().unwrap();
    let calls: Vec<&(u32, CallRec)> = all_calls.iter().filter(|(_, r)| only.map_or(true, |i| r.stream_at == i)).collect();
    let mine: std::collections::HashSet<u32> = calls.iter().filter_map(|(_, r)| r.conn).collect();
    let (mut inbound, mut outbound, mut clear, mut cancel, mut trunc_lat, mut greet, mut lag, mut close) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut trunc_err: Vec<f64> = vec![];
    let mut trunc_err_stall: Vec<f64> = vec![];
    let (mut in_lost, mut in_dup, mut in_reord, mut in_wrong) = (0u64, 0u64, 0u64, 0u64);
    let (mut out_lost, mut out_dup, mut out_reord, mut out_wrong, mut stale, mut late_fwd, mut corrupt) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut frames, mut blocks_expected, mut errors, mut clears, mut completed) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for (cid, c) in conns.iter() {
        if only.is_some() && !mine.contains(cid) {
            continue;
        }
        inbound.extend(c.inbound_lat.iter().filter(|x| inwin(x.0)).map(|x| x.1));
        cancel.extend(c.cancel_lat.iter().filter(|x| inwin(x.0)).map(|x| x.1));
        trunc_lat.extend(c.truncate_lat.iter().filter(|x| inwin(x.0)).map(|x| x.1));
        in_dup += c.dup;
        in_reord += c.reordered;
        in_wrong += c.wrong_call;
    }
    let blocks_per_delta = (sh.opts.delta_ms as usize * 8 / FRAME_BYTES).max(1) as u32;
    for (_, r) in calls.iter() {
        if r.error.is_some() {
            errors += 1;
            continue;
        }
        completed += 1;
        clears += r.clears as u64;
        outbound.extend(r.outbound_lat.iter().filter(|x| inwin(x.0)).map(|x| x.1));
        clear.extend(r.clear_lat.iter().filter(|x| inwin(x.0)).map(|x| x.1));
        lag.extend(r.send_lag.iter().copied());
        out_wrong += r.wrong_call_blocks;
        corrupt += r.corrupt_blocks;
        let Some(conn) = r.conn else { continue };
        let Some(c) = conns.get(&conn) else { continue };
        if let (Some((t3, t2)), Some(t1)) = (r.greeting_share, c.first_create_at) {
            if t1 >= r.start_at {
                greet.push(t1 - r.start_at + t3.saturating_sub(t2));
            }
        }
        if let Some(cl) = c.closed_at {
            close.push(cl.saturating_sub(r.hangup_at));
        }
        // Inbound: every frame sent at least 100 ms before the hang-up reached the model once.
        frames += r.cutoff_seq as u64;
        for s in 0..r.cutoff_seq as usize {
            if !c.seen.get(s).copied().unwrap_or(false) {
                in_lost += 1;
            }
        }
        // Outbound: per response, blocks sent before speech_started (and 100 ms before the
        // hang-up) must arrive once, in order; blocks sent after it must never be played.
        for (no, sent, ss_at) in &c.responses {
            let got = r.received.get(&(conn, *no)).cloned().unwrap_or_default();
            let mut seen = vec![0u32; sent.len() * blocks_per_delta as usize];
            let mut maxb: i64 = -1;
            for (b, after_clear) in &got {
                let b = *b as usize;
                if b < seen.len() {
                    seen[b] += 1;
                }
                if (b as i64) < maxb {
                    out_reord += 1;
                }
                maxb = maxb.max(b as i64);
                if *after_clear {
                    stale += 1;
                }
            }
            for (d, ts) in sent.iter().enumerate() {
                let late = ss_at.map_or(false, |ss| *ts > ss);
                for b in 0..blocks_per_delta as usize {
                    let k = seen[d * blocks_per_delta as usize + b];
                    if k > 1 {
                        out_dup += (k - 1) as u64;
                    }
                    if late {
                        if k > 0 {
                            late_fwd += 1;
                        }
                    } else if *ts + 100_000 <= r.hangup_at {
                        blocks_expected += 1;
                        if k == 0 {
                            out_lost += 1;
                        }
                    }
                }
            }
        }
        for (cn, no, played, at) in &r.played_at_clear {
            if *cn != conn || !inwin(*at) {
                continue;
            }
            if let Some((_, end)) = c.truncations.iter().find(|t| t.0 == *no) {
                let e = *end as f64 - played;
                if no % 3 == 0 { trunc_err_stall.push(e) } else { trunc_err.push(e) }
            }
        }
    }
    let mut all_trunc: Vec<f64> = trunc_err.iter().chain(trunc_err_stall.iter()).copied().collect();
    format!(
        "{{\"calls\":{},\"window_s\":{:.1},\"calls_completed\":{},\"calls_failed\":{},\"realtime_sockets_left_open\":{},\
\"inbound_ms\":{},\"outbound_ms\":{},\"clear_ms\":{},\"cancel_ms\":{},\"truncate_ms\":{},\"greeting_bridge_ms\":{},\
\"realtime_close_after_hangup_ms\":{},\"truncation_error_ms\":{},\"truncation_error_stall_ms\":{},\"truncation_error_all_ms\":{},\
\"harness_send_lag_ms\":{},\"clears\":{},\
\"inbound\":{{\"frames\":{},\"lost\":{},\"duplicated\":{},\"reordered\":{},\"wrong_call\":{}}},\
\"outbound\":{{\"blocks\":{},\"lost\":{},\"duplicated\":{},\"reordered\":{},\"wrong_call\":{},\"stale_after_clear\":{},\"late_deltas_played\":{},\"corrupt\":{}}}}}",
        if only.is_some() { calls.len() } else { sh.opts.calls }, (to - from) as f64 / 1e6, completed, errors, still_open,
        summary(&mut inbound), summary(&mut outbound), summary(&mut clear), summary(&mut cancel), summary(&mut trunc_lat),
        summary(&mut greet), summary(&mut close), summary_f(&mut trunc_err), summary_f(&mut trunc_err_stall), summary_f(&mut all_trunc),
        summary(&mut lag), clears,
        frames, in_lost, in_dup, in_reord, in_wrong,
        blocks_expected, out_lost, out_dup, out_reord, out_wrong, stale, late_fwd, corrupt
    )
}
