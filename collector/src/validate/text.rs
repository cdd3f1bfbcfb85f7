//! The one check every string from an agent passes: [`AgentText::parse`]. Strings
//! end up as label values on every scrape, in file names and in logs, so a byte that
//! breaks a line, moves a terminal's cursor or reorders displayed text never gets in.
//!
//! Valid UTF-8 is already guaranteed: the protobuf decoder refuses a `string` field
//! that is not, and the stream is then refused as malformed.

use std::fmt;

/// What a string must look like, besides carrying no forbidden character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRule {
    /// Free text of at most `limits.max_string_bytes` bytes.
    Text,
    /// An agent id: 1 to [`MAX_AGENT_ID_BYTES`] of A-Z a-z 0-9 . _ - : (it names files
    /// and credentials too).
    AgentId,
    /// A Prometheus label name, `[a-zA-Z_][a-zA-Z0-9_]*`, at most
    /// [`MAX_LABEL_NAME_BYTES`].
    LabelName,
    /// A bounded kind such as "driver_not_loaded": a-z and _, at most [`MAX_KIND_BYTES`];
    /// empty means none.
    Kind,
    /// A Kubernetes namespace or container name: an RFC 1123 label, 1 to
    /// [`MAX_KUBERNETES_LABEL_BYTES`] of a-z 0-9 and -, starting and ending
    /// alphanumeric (what the API server itself accepts).
    KubernetesLabel,
    /// A Kubernetes pod name: an RFC 1123 subdomain, 1 to
    /// [`MAX_KUBERNETES_SUBDOMAIN_BYTES`] of a-z 0-9 - and ., starting and ending
    /// alphanumeric.
    KubernetesSubdomain,
}

pub const MAX_AGENT_ID_BYTES: usize = 128;
pub const MAX_LABEL_NAME_BYTES: usize = 64;
pub const MAX_KIND_BYTES: usize = 32;
/// Kubernetes' DNS1123LabelMaxLength (k8s.io/apimachinery validation).
pub const MAX_KUBERNETES_LABEL_BYTES: usize = 63;
/// Kubernetes' DNS1123SubdomainMaxLength.
pub const MAX_KUBERNETES_SUBDOMAIN_BYTES: usize = 253;

/// Why a string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    TooLong {
        bytes: usize,
        max: usize,
    },
    /// A forbidden character and its byte offset.
    Forbidden {
        ch: char,
        at: usize,
    },
    NotAgentId,
    NotLabelName,
    NotKind,
    NotKubernetesName {
        dots: bool,
    },
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::TooLong { bytes, max } => {
                write!(f, "is {bytes} bytes, more than the limit of {max}")
            }
            TextError::Forbidden { ch, at } => write!(
                f,
                "holds the control or formatting character U+{:04X} at byte {at}",
                u32::from(*ch)
            ),
            TextError::NotAgentId => write!(
                f,
                "is not an agent id: 1 to {MAX_AGENT_ID_BYTES} characters of A-Z a-z 0-9 . _ - :"
            ),
            TextError::NotLabelName => write!(
                f,
                "must match [a-zA-Z_][a-zA-Z0-9_]* and be at most {MAX_LABEL_NAME_BYTES} bytes"
            ),
            TextError::NotKind => {
                write!(
                    f,
                    "is not a kind of at most {MAX_KIND_BYTES} characters of a-z and _"
                )
            }
            TextError::NotKubernetesName { dots } => write!(
                f,
                "is not a Kubernetes name: 1 or more of a-z 0-9 -{}, starting and ending with a letter or digit",
                if *dots { " ." } else { "" }
            ),
        }
    }
}

/// Characters no agent string may hold: C0 and C1 controls and DEL (they break the
/// exposition's lines and terminals), the Unicode line and paragraph separators
/// (line breaks to many readers), and the bidirectional embeddings, overrides and
/// isolates (they make a value display as another).
pub fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')
}

/// An RFC 1123 label (`dots: false`) or subdomain (`dots: true`), length aside.
fn is_kubernetes_name(s: &str, dots: bool) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A string from an agent that passed its [`TextRule`]. It cannot be built otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentText<'a>(&'a str);

impl<'a> AgentText<'a> {
    /// Checks `value` against `rule`; `max_text_bytes` bounds [`TextRule::Text`].
    pub fn parse(
        rule: TextRule,
        value: &'a str,
        max_text_bytes: usize,
    ) -> Result<AgentText<'a>, TextError> {
        let max = match rule {
            TextRule::Text => max_text_bytes,
            TextRule::AgentId => MAX_AGENT_ID_BYTES,
            TextRule::LabelName => MAX_LABEL_NAME_BYTES,
            TextRule::Kind => MAX_KIND_BYTES,
            TextRule::KubernetesLabel => MAX_KUBERNETES_LABEL_BYTES,
            TextRule::KubernetesSubdomain => MAX_KUBERNETES_SUBDOMAIN_BYTES,
        };
        // Length first: a huge value is refused without scanning it.
        if value.len() > max {
            return Err(TextError::TooLong {
                bytes: value.len(),
                max,
            });
        }
        if let Some((at, ch)) = value.char_indices().find(|(_, c)| is_forbidden(*c)) {
            return Err(TextError::Forbidden { ch, at });
        }
        let shaped = match rule {
            TextRule::Text => Ok(()),
            TextRule::AgentId if value.is_empty() || !value.chars().all(is_id_char) => {
                Err(TextError::NotAgentId)
            }
            TextRule::AgentId => Ok(()),
            TextRule::LabelName if !is_label_name(value) => Err(TextError::NotLabelName),
            TextRule::LabelName => Ok(()),
            TextRule::Kind if !value.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
                Err(TextError::NotKind)
            }
            TextRule::Kind => Ok(()),
            TextRule::KubernetesLabel if !is_kubernetes_name(value, false) => {
                Err(TextError::NotKubernetesName { dots: false })
            }
            TextRule::KubernetesSubdomain if !is_kubernetes_name(value, true) => {
                Err(TextError::NotKubernetesName { dots: true })
            }
            TextRule::KubernetesLabel | TextRule::KubernetesSubdomain => Ok(()),
        };
        shaped.map(|()| AgentText(value))
    }

    pub fn as_str(self) -> &'a str {
        self.0
    }
}

/// Whether `id` is a usable agent id.
pub fn is_agent_id(id: &str) -> bool {
    AgentText::parse(TextRule::AgentId, id, 0).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 256;

    fn forbidden() -> impl Strategy<Value = char> {
        prop_oneof![
            (0u32..0x20).prop_map(|c| char::from_u32(c).expect("a C0 control")),
            Just('\u{7f}'),
            (0x80u32..0xa0).prop_map(|c| char::from_u32(c).expect("a C1 control")),
            Just('\u{2028}'),
            Just('\u{2029}'),
            (0x202au32..=0x202e).prop_map(|c| char::from_u32(c).expect("a bidi control")),
            (0x2066u32..=0x2069).prop_map(|c| char::from_u32(c).expect("a bidi isolate")),
        ]
    }

    fn rules() -> impl Strategy<Value = TextRule> {
        prop_oneof![
            Just(TextRule::Text),
            Just(TextRule::AgentId),
            Just(TextRule::LabelName),
            Just(TextRule::Kind),
            Just(TextRule::KubernetesLabel),
            Just(TextRule::KubernetesSubdomain),
        ]
    }

    proptest! {
        #[test]
        fn a_forbidden_character_anywhere_is_refused_under_every_rule(
            rule in rules(),
            before in "[a-z]{0,10}",
            ch in forbidden(),
            after in "[a-z]{0,10}",
        ) {
            let value = format!("{before}{ch}{after}");
            let err = AgentText::parse(rule, &value, MAX).unwrap_err();
            prop_assert_eq!(err, TextError::Forbidden { ch, at: before.len() });
        }

        #[test]
        fn a_value_over_its_rule_s_length_is_refused(rule in rules(), extra in 1usize..4096) {
            let max = match rule {
                TextRule::Text => MAX,
                TextRule::AgentId => MAX_AGENT_ID_BYTES,
                TextRule::LabelName => MAX_LABEL_NAME_BYTES,
                TextRule::Kind => MAX_KIND_BYTES,
                TextRule::KubernetesLabel => MAX_KUBERNETES_LABEL_BYTES,
                TextRule::KubernetesSubdomain => MAX_KUBERNETES_SUBDOMAIN_BYTES,
            };
            let value = "a".repeat(max + extra);
            prop_assert_eq!(
                AgentText::parse(rule, &value, MAX).unwrap_err(),
                TextError::TooLong { bytes: max + extra, max }
            );
        }

        #[test]
        fn printable_text_within_the_limit_is_kept_as_it_is(value in "[ -~\u{a0}-\u{2027}\u{3000}-\u{9fff}]{0,60}") {
            prop_assume!(value.len() <= MAX);
            let text = AgentText::parse(TextRule::Text, &value, MAX).unwrap();
            prop_assert_eq!(text.as_str(), value.as_str());
        }
    }

    #[test]
    fn shaped_rules_refuse_what_does_not_fit_their_shape() {
        assert_eq!(
            AgentText::parse(TextRule::AgentId, "", MAX),
            Err(TextError::NotAgentId)
        );
        assert_eq!(
            AgentText::parse(TextRule::AgentId, "a b", MAX),
            Err(TextError::NotAgentId)
        );
        assert_eq!(
            AgentText::parse(TextRule::LabelName, "bad-key", MAX),
            Err(TextError::NotLabelName)
        );
        assert_eq!(
            AgentText::parse(TextRule::Kind, "Driver", MAX),
            Err(TextError::NotKind)
        );
        assert!(AgentText::parse(TextRule::Kind, "", MAX).is_ok());
        assert!(is_agent_id("node-1.example:7"));
        for (rule, bad) in [
            (TextRule::KubernetesLabel, ""),
            (TextRule::KubernetesLabel, "ML"),
            (TextRule::KubernetesLabel, "-ml"),
            (TextRule::KubernetesLabel, "ml-"),
            (TextRule::KubernetesLabel, "a.b"),
            (TextRule::KubernetesSubdomain, "pod_1"),
            (TextRule::KubernetesSubdomain, "pod.1."),
            (TextRule::KubernetesSubdomain, "Pod"),
        ] {
            assert!(
                matches!(
                    AgentText::parse(rule, bad, MAX),
                    Err(TextError::NotKubernetesName { .. })
                ),
                "{rule:?} took {bad:?}"
            );
        }
        assert!(AgentText::parse(TextRule::KubernetesLabel, "ml-training", MAX).is_ok());
        assert!(AgentText::parse(TextRule::KubernetesSubdomain, "train-7f9c.0", MAX).is_ok());
        assert!(AgentText::parse(TextRule::KubernetesLabel, "0", MAX).is_ok());
    }
}
