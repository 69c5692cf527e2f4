//! A Status as the `grpc-status` / `grpc-message` trailers, and Go's quoting
//! of the text grpc-go puts in its messages. The codes and `Status` itself
//! are `crate::status`'s.

use crate::status::{Code, Status};

impl Status {
    /// The `grpc-status` trailer value.
    pub fn code_text(&self) -> &'static str {
        code_text(self.code)
    }

    /// The `grpc-message` trailer value: percent-encoded as the gRPC HTTP/2 spec
    /// demands (every byte outside printable ASCII, and '%').
    pub fn encoded_message(&self) -> String {
        let mut out = String::with_capacity(self.message.len());
        for &byte in self.message.as_bytes() {
            if (0x20..=0x7e).contains(&byte) && byte != b'%' {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }
}

pub fn code_text(code: Code) -> &'static str {
    const TEXT: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    TEXT[code as usize]
}

/// Go's `%q` of ASCII text (header values, paths), as grpc-go quotes them in
/// messages.
pub fn go_quoted(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &byte in bytes {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded_outside_printable_ascii() {
        let status = Status::new(Code::Internal, "50% of \"x\"\nés");
        assert_eq!(status.encoded_message(), "50%25 of \"x\"%0A%C3%A9s");
    }

    #[test]
    fn code_text_is_the_decimal_code() {
        assert_eq!(code_text(Code::Unauthenticated), "16");
        assert_eq!(Status::new(Code::OutOfRange, "x").code_text(), "11");
    }

    #[test]
    fn go_quoting_escapes_quotes_backslashes_and_control_bytes() {
        assert_eq!(go_quoted(b"a\"b\\c\td\x01"), r#""a\"b\\c\td\x01""#);
    }
}
