//! Wire helpers: base64, SHA-1, WebSocket framing (RFC 6455), tiny JSON field scanning.

use std::io::{self, Read, Write};
use std::net::TcpStream;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64_encode(data: &[u8]) -> String {
    let mut out = Vec::with_capacity((data.len() + 2) / 3 * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        out.push(B64[(n >> 18) as usize & 63]);
        out.push(B64[(n >> 12) as usize & 63]);
        out.push(if c.len() > 1 { B64[(n >> 6) as usize & 63] } else { b'=' });
        out.push(if c.len() > 2 { B64[n as usize & 63] } else { b'=' });
    }
    String::from_utf8(out).unwrap()
}

fn b64_val(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

pub fn b64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for c in s.chunks(4) {
        let pad = c.iter().rev().take_while(|&&x| x == b'=').count();
        let mut n = 0u32;
        for (i, &x) in c.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { b64_val(x)? };
            n = (n << 6) | v;
        }
        out.push((n >> 16) as u8);
        if pad < 2 {
            out.push((n >> 8) as u8);
        }
        if pad < 1 {
            out.push(n as u8);
        }
    }
    Some(out)
}

pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64) * 8;
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let (mut a, mut b, mut c, mut d, mut e) = (h[0], h[1], h[2], h[3], h[4]);
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
        h[4] = h[4].wrapping_add(e);
    }
    let mut out = [0u8; 20];
    for i in 0..5 {
        out[4 * i..4 * i + 4].copy_from_slice(&h[i].to_be_bytes());
    }
    out
}

pub fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..20].copy_from_slice(&sha1(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(msg);
    let ih = sha1(&inner);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&ih);
    sha1(&outer)
}

pub fn ws_accept(key: &str) -> String {
    let mut s = key.trim().as_bytes().to_vec();
    s.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    b64_encode(&sha1(&s))
}

/// One WebSocket endpoint over a blocking TcpStream; `client` masks what it sends.
pub struct Ws {
    pub sock: TcpStream,
    client: bool,
    buf: Vec<u8>,
    start: usize,
    frag: Vec<u8>,
    rng: u64,
    pub closed: bool,
}

pub enum Msg {
    Text(Vec<u8>),
    Close,
}

impl Ws {
    pub fn new(sock: TcpStream, client: bool, leftover: Vec<u8>, seed: u64) -> Ws {
        sock.set_nodelay(true).ok();
        Ws { sock, client, buf: leftover, start: 0, frag: Vec::new(), rng: seed | 1, closed: false }
    }

    pub fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send_frame(0x1, payload)
    }

    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(0x80 | opcode);
        let m = if self.client { 0x80 } else { 0 };
        let n = payload.len();
        if n < 126 {
            f.push(m | n as u8);
        } else if n < 65536 {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        if self.client {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let key = (self.rng as u32).to_ne_bytes();
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        } else {
            f.extend_from_slice(payload);
        }
        self.sock.write_all(&f)
    }

    /// The next complete message already buffered, if any (control frames handled here).
    pub fn next_buffered(&mut self) -> io::Result<Option<Msg>> {
        loop {
            let avail = &self.buf[self.start..];
            if avail.len() < 2 {
                return Ok(None);
            }
            let fin = avail[0] & 0x80 != 0;
            let op = avail[0] & 0x0f;
            let masked = avail[1] & 0x80 != 0;
            let mut len = (avail[1] & 0x7f) as usize;
            let mut pos = 2;
            if len == 126 {
                if avail.len() < 4 {
                    return Ok(None);
                }
                len = u16::from_be_bytes([avail[2], avail[3]]) as usize;
                pos = 4;
            } else if len == 127 {
                if avail.len() < 10 {
                    return Ok(None);
                }
                len = u64::from_be_bytes(avail[2..10].try_into().unwrap()) as usize;
                pos = 10;
            }
            let mask_at = pos;
            if masked {
                pos += 4;
            }
            if avail.len() < pos + len {
                return Ok(None);
            }
            let mut payload = avail[pos..pos + len].to_vec();
            if masked {
                let key = [avail[mask_at], avail[mask_at + 1], avail[mask_at + 2], avail[mask_at + 3]];
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= key[i & 3];
                }
            }
            self.start += pos + len;
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            match op {
                0x8 => {
                    if !self.closed {
                        self.closed = true;
                        let _ = self.send_frame(0x8, &payload[..payload.len().min(2)]);
                    }
                    return Ok(Some(Msg::Close));
                }
                0x9 => {
                    self.send_frame(0xA, &payload)?;
                }
                0xA => {}
                0x0 => {
                    self.frag.extend_from_slice(&payload);
                    if fin {
                        return Ok(Some(Msg::Text(std::mem::take(&mut self.frag))));
                    }
                }
                _ => {
                    if fin {
                        return Ok(Some(Msg::Text(payload)));
                    }
                    self.frag = payload;
                }
            }
        }
    }

    /// Wait up to `us` microseconds for data (ppoll: microsecond timers, unlike SO_RCVTIMEO's
    /// jiffies), then read once. Err(WouldBlock) when nothing came, Ok(false) on EOF.
    pub fn fill_within(&mut self, us: u64) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let mut fds = PollFd { fd: self.sock.as_raw_fd(), events: 1, revents: 0 };
        let ts = Timespec { tv_sec: (us / 1_000_000) as i64, tv_nsec: ((us % 1_000_000) * 1000) as i64 };
        let r = unsafe { ppoll(&mut fds, 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        self.fill()
    }

    /// Read once from the socket (blocking). Ok(false) on EOF.
    pub fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 && self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut tmp = [0u8; 65536];
        match self.sock.read(&mut tmp) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.send_frame(0x8, &1000u16.to_be_bytes());
        }
    }
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn ppoll(fds: *mut PollFd, nfds: u64, tmo: *const Timespec, sigmask: *const u8) -> i32;
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// The raw (still JSON-escaped) string value of `"key": "..."`, first occurrence.
pub fn str_field<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let at = value_at(json, key)?;
    if json.get(at) != Some(&b'"') {
        return None;
    }
    let s = at + 1;
    let mut i = s;
    while i < json.len() {
        match json[i] {
            b'\\' => i += 2,
            b'"' => return Some(&json[s..i]),
            _ => i += 1,
        }
    }
    None
}

pub fn int_field(json: &[u8], key: &str) -> Option<i64> {
    let at = value_at(json, key)?;
    let mut i = at;
    let neg = json.get(i) == Some(&b'-');
    if neg {
        i += 1;
    }
    let mut v: i64 = 0;
    let s = i;
    while i < json.len() && json[i].is_ascii_digit() {
        v = v * 10 + (json[i] - b'0') as i64;
        i += 1;
    }
    if i == s {
        return None;
    }
    Some(if neg { -v } else { v })
}

pub fn bool_field(json: &[u8], key: &str) -> Option<bool> {
    let at = value_at(json, key)?;
    let rest = &json[at..];
    if rest.starts_with(b"true") {
        Some(true)
    } else if rest.starts_with(b"false") {
        Some(false)
    } else {
        None
    }
}

fn value_at(json: &[u8], key: &str) -> Option<usize> {
    let pat = format!("\"{}\"", key);
    let p = pat.as_bytes();
    let mut from = 0;
    while from + p.len() <= json.len() {
        let idx = json[from..].windows(p.len()).position(|w| w == p)? + from;
        let mut i = idx + p.len();
        while i < json.len() && json[i].is_ascii_whitespace() {
            i += 1;
        }
        if json.get(i) == Some(&b':') {
            i += 1;
            while i < json.len() && json[i].is_ascii_whitespace() {
                i += 1;
            }
            return Some(i);
        }
        from = idx + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sha1_and_b64_match_rfc_examples() {
        assert_eq!(ws_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(b64_decode(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(b64_encode(b"hello"), "aGVsbG8=");
    }
    #[test]
    fn fields_are_found_with_or_without_spaces() {
        let j = br#"{"type": "x", "n":12,"s":"a\"b"}"#;
        assert_eq!(str_field(j, "type").unwrap(), b"x");
        assert_eq!(int_field(j, "n"), Some(12));
        assert_eq!(str_field(j, "s").unwrap(), br#"a\"b"#);
        let v = br#"{"turn_detection": {"interrupt_response": false, "create_response":true}}"#;
        assert_eq!(bool_field(v, "interrupt_response"), Some(false));
        assert_eq!(bool_field(v, "create_response"), Some(true));
        assert_eq!(bool_field(v, "missing"), None);
    }
}
