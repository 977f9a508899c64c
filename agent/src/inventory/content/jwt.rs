//! Compact JWS tokens: the claims expiry and identity need, from the payload; the signature is
//! never looked at.
use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use serde_json::{Map, Value};

use super::{Kind, Parsed};
use crate::identity::ids::{is_dns1123_label, is_dns1123_subdomain};

/// base64url, padding optional, lenient about non-zero trailing bits.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes one base64url segment to a JSON object. Errors are fixed words: base64 and JSON errors
/// can quote the offending byte, so they are never passed on.
fn decode_json_object(segment: &[u8]) -> Result<Map<String, Value>, &'static str> {
    let bytes = B64URL.decode(segment).map_err(|_| "not base64url")?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("not a JSON object"),
        Err(_) => Err("not JSON"),
    }
}

pub(super) fn parse_jwt(text: &[u8]) -> Parsed {
    let segments: Vec<&[u8]> = text.split(|&b| b == b'.').collect();
    let [header, payload, _signature] = segments[..] else {
        return Parsed::opaque("looks like a JWT but does not have three dot-separated parts");
    };
    if let Err(why) = decode_json_object(header) {
        return Parsed::opaque(format!("looks like a JWT but its header is {why}"));
    }
    let claims = match decode_json_object(payload) {
        Ok(claims) => claims,
        Err(why) => return Parsed::opaque(format!("looks like a JWT but its payload is {why}")),
    };
    jwt_claims(&claims)
}

fn number(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64).filter(|n| n.is_finite())
}

fn string(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

fn jwt_claims(claims: &Map<String, Value>) -> Parsed {
    let audience = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let mut parsed = Parsed {
        kind: Kind::Jwt,
        expiry: number(claims.get("exp")),
        issued: number(claims.get("iat")),
        not_before: number(claims.get("nbf")),
        audience,
        subject: string(claims.get("sub")),
        ..Parsed::default()
    };
    if let Some(Value::Object(k8s)) = claims.get("kubernetes.io") {
        let child = |name: &str, field: &str| match k8s.get(name) {
            Some(Value::Object(o)) => string(o.get(field)),
            _ => None,
        };
        parsed.namespace = string(k8s.get("namespace"));
        parsed.pod_name = child("pod", "name");
        parsed.pod_uid = child("pod", "uid");
        parsed.service_account = child("serviceaccount", "name");
        parsed.stale_after = number(k8s.get("warnafter"));
    }
    // Secret-based tokens (before bound tokens): flat claims, no exp.
    if parsed.service_account.is_none() {
        parsed.service_account =
            string(claims.get("kubernetes.io/serviceaccount/service-account.name"));
        if parsed.service_account.is_some() && parsed.namespace.is_none() {
            parsed.namespace = string(claims.get("kubernetes.io/serviceaccount/namespace"));
        }
    }
    // Names that become labels must be what the API server allows; a token whose claims name
    // anything else is no Kubernetes service-account token: a plain JWT, without those names.
    let bad_name =
        |n: &Option<String>, valid: fn(&str) -> bool| n.as_deref().is_some_and(|n| !valid(n));
    if bad_name(&parsed.service_account, is_dns1123_subdomain)
        || bad_name(&parsed.namespace, is_dns1123_label)
    {
        parsed.service_account = None;
        parsed.namespace = None;
    }
    if parsed.service_account.is_some() {
        parsed.kind = Kind::ServiceaccountToken;
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_that_could_not_be_kubernetes_names_are_dropped() {
        let claims = |sa: &str, ns: &str| -> Map<String, Value> {
            serde_json::from_value(serde_json::json!({
                "exp": 2000000000,
                "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa}}
            }))
            .unwrap()
        };
        let ok = jwt_claims(&claims("builder", "shop"));
        assert_eq!(ok.kind, Kind::ServiceaccountToken);
        assert_eq!(ok.service_account.as_deref(), Some("builder"));
        for (sa, ns) in [
            ("b\"} 1\nforged 7", "shop"),
            ("builder", "Shop"),
            ("a b", "x"),
        ] {
            let bad = jwt_claims(&claims(sa, ns));
            assert_eq!(bad.kind, Kind::Jwt, "{sa:?} {ns:?}");
            assert_eq!((bad.service_account, bad.namespace), (None, None));
            assert!(bad.problem.is_none());
            assert_eq!(bad.expiry, Some(2000000000.0));
        }
    }
}
