//! Octal escapes (`\ooo`), the one way podfs writes text that must stay on one line and
//! reads text the kernel wrote that way: `scope` targets, and the mount points of
//! `/proc/self/mountinfo`.

/// `text` with a backslash and every control character written as `\ooo` in octal. In a
/// `scope` target, a newline would otherwise read as a rule of its own.
pub fn escape(target: &str) -> std::borrow::Cow<'_, str> {
    if !target.chars().any(|c| c == '\\' || c.is_control()) {
        return target.into();
    }
    let mut out = String::with_capacity(target.len() + 8);
    for c in target.chars() {
        if c == '\\' || (c.is_control() && (c as u32) < 0x100) {
            out.push_str(&format!("\\{:03o}", c as u32));
        } else if c.is_control() {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// [`escape`] undone; also reads the paths of `/proc/self/mountinfo`, which the kernel
/// escapes the same way (space, tab, newline, backslash).
pub fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                match char::from_u32(v) {
                    Some(c) => {
                        let mut buf = [0; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    None => out.extend_from_slice(&bytes[i..i + 4]),
                }
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip_and_read_the_kernels() {
        let tricky = "/w/a\nb\\c\td";
        assert_eq!(escape(tricky), "/w/a\\012b\\134c\\011d");
        assert_eq!(unescape(&escape(tricky)), tricky);
        assert_eq!(escape("/home/a b/c"), "/home/a b/c");
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\9b"), "/a\\9b");
    }
}
