//! JSON Web Tokens signed with HS256 (RFC 7519 over RFC 7515's compact form): verify
//! only, the way a handshake hook needs it.
//!
//! ```ignore
//! let secret = settings.jwt_secret.as_bytes();
//! let now = host::now_ms() / 1000;
//! match jwt::verify_hs256(token, secret, now, 30) {
//!     Ok(claims) => accept(claims["sub"].as_str().map(str::to_owned), vec![]),
//!     Err(e) => reject(401, &e.to_string()),
//! }
//! ```

use base64::Engine as _;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts, or a header or payload that is not a JSON object, or a
    /// time claim that is not a number.
    Malformed(&'static str),
    /// The header names another algorithm than HS256 (`none` included), or carries
    /// `crit` extensions this verifier does not know.
    Algorithm(String),
    /// The signature does not match.
    Signature,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` has not come yet (beyond the leeway).
    NotYetValid,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::Algorithm(alg) => write!(f, "token algorithm {alg:?} is not HS256"),
            JwtError::Signature => f.write_str("token signature does not match"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not valid yet"),
        }
    }
}

impl std::error::Error for JwtError {}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn object(part: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = B64.decode(part).map_err(|_| JwtError::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(what)),
    }
}

/// A time claim in seconds, if present (a number; fractions allowed, RFC 7519 §2).
fn seconds(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or(JwtError::Malformed("a time claim is not a number")),
    }
}

/// Verify `token` (`header.payload.signature`) as signed with HS256 under `secret`, at
/// `now` (Unix seconds, e.g. `host::now_ms() / 1000`), allowing `leeway` seconds of
/// clock skew, and return its claims.
///
/// The header must say `"alg": "HS256"`: a token that names `none` or any other
/// algorithm is refused whatever its signature, so a client cannot choose how it is
/// checked. The signature is compared in constant time. `exp` and `nbf` are checked
/// when present; which other claims matter (`sub`, `aud`, `iss`, room lists) is the
/// plugin's to decide from what is returned.
pub fn verify_hs256(
    token: &str,
    secret: &[u8],
    now: u64,
    leeway: u64,
) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("a token has three parts"));
    };
    let header = object(h, "the header is not base64url JSON")?;
    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => {}
        other => return Err(JwtError::Algorithm(other.unwrap_or("").to_owned())),
    }
    if header.contains_key("crit") {
        return Err(JwtError::Algorithm("HS256 with crit extensions".into()));
    }
    let sig = B64
        .decode(sig)
        .map_err(|_| JwtError::Malformed("the signature is not base64url"))?;
    let signed_len = h.len() + 1 + p.len();
    let want = crate::sign::hmac_sha256(secret, &token.as_bytes()[..signed_len]);
    if !bool::from(want.as_slice().ct_eq(sig.as_slice())) {
        return Err(JwtError::Signature);
    }
    let claims = object(p, "the payload is not base64url JSON")?;
    let (now, leeway) = (now as f64, leeway as f64);
    if seconds(&claims, "exp")?.is_some_and(|exp| now >= exp + leeway) {
        return Err(JwtError::Expired);
    }
    if seconds(&claims, "nbf")?.is_some_and(|nbf| now + leeway < nbf) {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token as an issuer would make it.
    fn issue(header: &str, claims: &str, secret: &[u8]) -> String {
        let signing = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = crate::sign::hmac_sha256(secret, signing.as_bytes());
        format!("{signing}.{}", B64.encode(sig))
    }

    const HS: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn rfc_7515_appendix_a1_token_verifies() {
        // RFC 7515 A.1: an HS256 JWS with its key (a JWK "k", base64url).
        let key = B64
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let claims = verify_hs256(token, &key, 1_300_819_000, 0).unwrap();
        assert_eq!(claims["iss"], "joe");
        assert_eq!(
            verify_hs256(token, &key, 1_300_819_380, 0),
            Err(JwtError::Expired)
        );
        assert!(
            verify_hs256(token, &key, 1_300_819_380, 10).is_ok(),
            "leeway"
        );
        assert_eq!(
            verify_hs256(token, b"other key", 0, 0),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let good = issue(HS, r#"{"sub":"ann","nbf":100,"exp":200}"#, b"k");
        assert_eq!(verify_hs256(&good, b"k", 150, 0).unwrap()["sub"], "ann");
        assert_eq!(verify_hs256(&good, b"k", 99, 0), Err(JwtError::NotYetValid));
        assert_eq!(verify_hs256(&good, b"k", 200, 0), Err(JwtError::Expired));
        // alg "none" with no signature, and another algorithm, whatever they carry.
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), B64.encode("{}"));
        assert_eq!(
            verify_hs256(&none, b"k", 0, 0),
            Err(JwtError::Algorithm("none".into()))
        );
        let hs512 = issue(r#"{"alg":"HS512"}"#, "{}", b"k");
        assert!(matches!(
            verify_hs256(&hs512, b"k", 0, 0),
            Err(JwtError::Algorithm(_))
        ));
        let crit = issue(r#"{"alg":"HS256","crit":["x"]}"#, "{}", b"k");
        assert!(matches!(
            verify_hs256(&crit, b"k", 0, 0),
            Err(JwtError::Algorithm(_))
        ));
        // A payload swapped under the same signature.
        let (signing, sig) = good.rsplit_once('.').unwrap();
        let (h, _) = signing.split_once('.').unwrap();
        let swapped = format!("{h}.{}.{sig}", B64.encode(r#"{"sub":"root"}"#));
        assert_eq!(
            verify_hs256(&swapped, b"k", 150, 0),
            Err(JwtError::Signature)
        );
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            &format!("{}.e30.***", B64.encode(HS)),
        ] {
            assert!(
                matches!(verify_hs256(bad, b"k", 0, 0), Err(JwtError::Malformed(_))),
                "{bad}"
            );
        }
        let list = issue(HS, "[1]", b"k");
        assert!(matches!(
            verify_hs256(&list, b"k", 0, 0),
            Err(JwtError::Malformed(_))
        ));
        let text_exp = issue(HS, r#"{"exp":"soon"}"#, b"k");
        assert!(matches!(
            verify_hs256(&text_exp, b"k", 0, 0),
            Err(JwtError::Malformed(_))
        ));
    }
}
