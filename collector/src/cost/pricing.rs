//! Prices per GPU-hour: the shipped catalogue, the operator's own file, and bare-metal
//! costing (capex over an amortisation period, energy, operations).
//!
//! A price is looked up per GPU, most specific first: provider + instance type, then
//! provider + GPU model, then the host's `price_class` label, then the bare-metal
//! settings for providers named there. A GPU that matches nothing has no price: it is
//! reported as unpriced, never as free.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::config::BareMetalConfig;

/// The catalogue shipped with the collector (collector/pricing/default.toml).
pub const DEFAULT_CATALOGUE: &str = include_str!("../../pricing/default.toml");
/// The name the shipped catalogue goes by in error messages.
pub const DEFAULT_CATALOGUE_NAME: &str = "<built-in collector/pricing/default.toml>";
/// The host label that selects a `price_class` entry.
pub const PRICE_CLASS_LABEL: &str = "price_class";
/// Seconds in an hour.
const SECONDS_PER_HOUR: f64 = 3600.0;
/// Joules in a kilowatt-hour.
pub const JOULES_PER_KWH: f64 = 3.6e6;

/// A catalogue that cannot be used, with the file, line and field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PricingError {
    #[error(
        "cannot read price catalogue {path}: {reason}; fix pricing_file in the collector config"
    )]
    Read { path: PathBuf, reason: String },
    #[error("invalid price catalogue {file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("invalid price catalogue {file}, line {line}, field `{field}`: {reason}")]
    Entry {
        file: String,
        line: usize,
        field: &'static str,
        reason: String,
    },
    #[error("invalid bare-metal setting bare_metal.{field}: {reason}")]
    BareMetal { field: String, reason: String },
}

/// How a GPU's price was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PriceBasis {
    InstanceType,
    Model,
    PriceClass,
    BareMetal,
}

impl PriceBasis {
    /// Stable name, shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PriceBasis::InstanceType => "instance_type",
            PriceBasis::Model => "model",
            PriceBasis::PriceClass => "price_class",
            PriceBasis::BareMetal => "bare_metal",
        }
    }
}

/// What a GPU costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// Dollars per GPU-hour, whatever the GPU does (for bare metal: capex and operations).
    pub usd_per_gpu_hour: f64,
    /// Dollars per joule of measured GPU energy on top (bare metal: PUE x tariff); 0 in clouds,
    /// where power is in the price.
    pub usd_per_joule: f64,
    pub basis: PriceBasis,
    /// Where the figure comes from.
    pub source: Arc<str>,
    /// When it was read (YYYY-MM or YYYY-MM-DD).
    pub as_of: Arc<str>,
}

impl Price {
    /// Dollars for `seconds` of GPU time (energy not included).
    pub fn time_cost(&self, seconds: f64) -> f64 {
        seconds * self.usd_per_gpu_hour / SECONDS_PER_HOUR
    }
}

/// One catalogue entry, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceEntry {
    pub provider: Option<String>,
    pub instance_type: Option<String>,
    /// A model key (see [`model_key`]).
    pub model: Option<String>,
    pub price_class: Option<String>,
    pub usd_per_gpu_hour: f64,
    pub note: Option<String>,
    pub source: Arc<str>,
    pub as_of: Arc<str>,
    /// Which file it came from.
    pub file: Arc<str>,
    /// The line of its `[[price]]` table in that file.
    pub line: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    #[serde(default)]
    price: Vec<Spanned<RawEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    provider: Option<Spanned<String>>,
    instance_type: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    price_class: Option<Spanned<String>>,
    usd_per_gpu_hour: Option<Spanned<f64>>,
    note: Option<String>,
    source: Option<Spanned<String>>,
    as_of: Option<Spanned<String>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Whether `s` is a date written YYYY-MM or YYYY-MM-DD that exists.
pub fn is_catalogue_date(s: &str) -> bool {
    let full = match s.len() {
        7 => format!("{s}-01"),
        10 => s.to_string(),
        _ => return false,
    };
    let b = full.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10)) {
        return false;
    }
    humantime::parse_rfc3339(&format!("{full}T00:00:00Z")).is_ok()
}

/// Parses and checks one catalogue file's text. `file` names it in errors.
pub fn parse_catalogue(text: &str, file: &str) -> Result<Vec<PriceEntry>, PricingError> {
    let raw: RawCatalogue = toml::from_str(text).map_err(|e| PricingError::Parse {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    let file_name: Arc<str> = file.into();
    let mut out = Vec::with_capacity(raw.price.len());
    for entry in raw.price {
        let entry_line = line_of(text, entry.span().start);
        let e = entry.into_inner();
        let err = |line: usize, field: &'static str, reason: String| PricingError::Entry {
            file: file.to_string(),
            line,
            field,
            reason,
        };
        let text_field = |v: &Option<Spanned<String>>,
                          field: &'static str|
         -> Result<Option<String>, PricingError> {
            match v {
                None => Ok(None),
                Some(s) if s.get_ref().trim().is_empty() => Err(err(
                    line_of(text, s.span().start),
                    field,
                    "is empty; remove the key or give it a value".into(),
                )),
                Some(s) => Ok(Some(s.get_ref().trim().to_string())),
            }
        };
        let provider = text_field(&e.provider, "provider")?.map(|p| p.to_ascii_lowercase());
        let instance_type = text_field(&e.instance_type, "instance_type")?;
        let model = text_field(&e.model, "model")?.map(|m| model_key(&m));
        let price_class = text_field(&e.price_class, "price_class")?;
        let price = match &e.usd_per_gpu_hour {
            None => {
                return Err(err(
                    entry_line,
                    "usd_per_gpu_hour",
                    "is missing: every entry needs a price in US dollars per GPU-hour".into(),
                ));
            }
            Some(p) => {
                let v = *p.get_ref();
                if !v.is_finite() || v < 0.0 {
                    return Err(err(
                        line_of(text, p.span().start),
                        "usd_per_gpu_hour",
                        format!(
                            "{v} is not a price: it must be a finite number of dollars, 0 or more"
                        ),
                    ));
                }
                v
            }
        };
        let source = match text_field(&e.source, "source")? {
            Some(s) => s,
            None => {
                return Err(err(
                    entry_line,
                    "source",
                    "is missing: every price says where it comes from (a URL or a document)".into(),
                ));
            }
        };
        let as_of = match &e.as_of {
            None => {
                return Err(err(
                    entry_line,
                    "as_of",
                    "is missing: every price says when it was read, as YYYY-MM or YYYY-MM-DD"
                        .into(),
                ));
            }
            Some(d) => {
                let v = d.get_ref().trim();
                if !is_catalogue_date(v) {
                    return Err(err(
                        line_of(text, d.span().start),
                        "as_of",
                        format!("{v:?} is not a date written YYYY-MM or YYYY-MM-DD"),
                    ));
                }
                v.to_string()
            }
        };
        let keyed = (provider.is_some() && (instance_type.is_some() || model.is_some()))
            || price_class.is_some();
        if !keyed {
            return Err(err(
                entry_line,
                "provider",
                "an entry needs provider and instance_type, provider and model, or price_class"
                    .into(),
            ));
        }
        out.push(PriceEntry {
            provider,
            instance_type,
            model,
            price_class,
            usd_per_gpu_hour: price,
            note: e.note,
            source: source.into(),
            as_of: as_of.into(),
            file: file_name.clone(),
            line: entry_line,
        });
    }
    Ok(out)
}

/// Providers a host can report without a catalogue entry of its own: what the agent
/// detects beside the cloud providers the shipped catalogue prices.
const DETECTED_PROVIDERS: [&str; 1] = ["on-prem"];

/// Why each of the operator's entries can never match, as warnings naming the entry's
/// file and line and the keys that are known: a provider that neither the shipped
/// catalogue nor the agent's detection names (e.g. "amazon" for "aws"), or a model no
/// GPU name maps to. Such an entry is kept (an agent may set any provider name in its
/// config), but a typo is otherwise silently unpriced.
pub fn unknown_keys(user: &[PriceEntry], shipped: &[PriceEntry]) -> Vec<String> {
    let providers: std::collections::BTreeSet<&str> = shipped
        .iter()
        .filter_map(|e| e.provider.as_deref())
        .chain(DETECTED_PROVIDERS)
        .collect();
    let models: std::collections::BTreeSet<&str> =
        shipped.iter().filter_map(|e| e.model.as_deref()).collect();
    let join =
        |set: &std::collections::BTreeSet<&str>| set.iter().copied().collect::<Vec<_>>().join(", ");
    let mut out = Vec::new();
    for e in user {
        if let Some(p) = &e.provider
            && !providers.contains(p.as_str())
        {
            out.push(format!(
                "{}:{}: provider {p:?} is not one gpulse detects or prices ({}); the entry only matches hosts whose agent sets provider = {p:?}",
                e.file,
                e.line,
                join(&providers)
            ));
        }
        if let Some(m) = &e.model
            && !models.contains(m.as_str())
        {
            out.push(format!(
                "{}:{}: model {m:?} is not a known GPU model key ({}); it matches only GPUs whose name maps to it",
                e.file,
                e.line,
                join(&models)
            ));
        }
    }
    out
}

/// Maps a GPU name as NVML reports it ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB")
/// to a catalogue model key ("h100", "a100-80gb"). Catalogue `model` values go through it
/// too, so "H100" and "h100" are the same key. Unknown names become a lowercase slug.
pub fn model_key(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let s = lower
        .trim()
        .trim_start_matches("nvidia")
        .trim_start_matches(['-', ' ', '_']);
    let has = |t: &str| s.contains(t);
    let slug = || -> String {
        let mut out = String::new();
        for c in s.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.ends_with('-') && !out.is_empty() {
                out.push('-');
            }
        }
        out.trim_end_matches('-').to_string()
    };
    // Order matters: longer names first (gh200 before h200, l40s before l40 before l4).
    let key = if has("gh200") {
        "gh200"
    } else if has("gb200") {
        "gb200"
    } else if has("b200") {
        "b200"
    } else if has("h200") {
        "h200"
    } else if has("h100") {
        if has("pcie") {
            "h100-pcie"
        } else if has("nvl") {
            "h100-nvl"
        } else {
            "h100"
        }
    } else if has("h800") {
        "h800"
    } else if has("a100") {
        if has("80g") { "a100-80gb" } else { "a100-40gb" }
    } else if has("l40s") {
        "l40s"
    } else if has("l40") {
        "l40"
    } else if has("a10g") {
        "a10g"
    } else if has("l4") && !has("l40") {
        "l4"
    } else if has("a10") {
        "a10"
    } else if has("v100") {
        "v100"
    } else if has("t4") {
        "t4"
    } else {
        return slug();
    };
    key.to_string()
}

/// What is known about a GPU when pricing it.
#[derive(Debug, Clone, Copy)]
pub struct PriceQuery<'a> {
    pub provider: &'a str,
    pub instance_type: &'a str,
    /// GPU name as NVML reports it.
    pub model: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The catalogue in force, with the bare-metal settings.
#[derive(Debug, Clone)]
pub struct Pricing {
    /// Operator entries first, then the shipped ones: the first match at a level wins.
    entries: Vec<PriceEntry>,
    bare_metal: BareMetalConfig,
    bare_metal_source: Arc<str>,
}

impl Pricing {
    /// The shipped catalogue, then `user_file` (whose entries win), then bare metal.
    pub fn load(
        user_file: Option<&Path>,
        bare_metal: &BareMetalConfig,
    ) -> Result<Pricing, PricingError> {
        let user = match user_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| PricingError::Read {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                Some((text, path.display().to_string()))
            }
            None => None,
        };
        Pricing::from_texts(
            user.as_ref().map(|(t, f)| (t.as_str(), f.as_str())),
            bare_metal,
        )
    }

    /// As [`Pricing::load`], from the text of the operator's file and its name.
    pub fn from_texts(
        user: Option<(&str, &str)>,
        bare_metal: &BareMetalConfig,
    ) -> Result<Pricing, PricingError> {
        bare_metal.check()?;
        let mut entries = match user {
            Some((text, file)) => parse_catalogue(text, file)?,
            None => Vec::new(),
        };
        let shipped = parse_catalogue(DEFAULT_CATALOGUE, DEFAULT_CATALOGUE_NAME)?;
        for warning in unknown_keys(&entries, &shipped) {
            tracing::warn!("{warning}");
        }
        entries.extend(shipped);
        Ok(Pricing {
            entries,
            bare_metal: bare_metal.clone(),
            bare_metal_source: "collector config [bare_metal]".into(),
        })
    }

    pub fn entries(&self) -> &[PriceEntry] {
        &self.entries
    }

    fn priced(e: &PriceEntry, basis: PriceBasis) -> Price {
        Price {
            usd_per_gpu_hour: e.usd_per_gpu_hour,
            usd_per_joule: 0.0,
            basis,
            source: e.source.clone(),
            as_of: e.as_of.clone(),
        }
    }

    /// The price of one GPU, or `None` when nothing matches (unpriced, never free).
    pub fn price(&self, q: &PriceQuery<'_>) -> Option<Price> {
        let provider = q.provider.trim().to_ascii_lowercase();
        let model = model_key(q.model);
        let instance = q.instance_type.trim();
        if !provider.is_empty() {
            if !instance.is_empty()
                && let Some(e) = self.entries.iter().find(|e| {
                    e.provider.as_deref() == Some(provider.as_str())
                        && e.instance_type
                            .as_deref()
                            .is_some_and(|t| t.eq_ignore_ascii_case(instance))
                        // An instance type fixes its GPU: one reported with another GPU is
                        // misnamed, and priced by its model instead.
                        && e.model.as_deref().is_none_or(|m| m == model)
                })
            {
                return Some(Self::priced(e, PriceBasis::InstanceType));
            }
            if let Some(e) = self.entries.iter().find(|e| {
                e.provider.as_deref() == Some(provider.as_str())
                    && e.instance_type.is_none()
                    && e.model.as_deref() == Some(model.as_str())
            }) {
                return Some(Self::priced(e, PriceBasis::Model));
            }
        }
        if let Some(class) = q.labels.get(PRICE_CLASS_LABEL)
            && let Some(e) = self
                .entries
                .iter()
                .find(|e| e.price_class.as_deref() == Some(class.as_str()))
        {
            return Some(Self::priced(e, PriceBasis::PriceClass));
        }
        let bm = &self.bare_metal;
        if bm
            .providers
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&provider))
            && let Some(capex) = bm
                .capex_usd_per_gpu
                .iter()
                .find(|(k, _)| model_key(k) == model)
                .map(|(_, v)| *v)
        {
            let hours = bm.amortization.as_secs_f64() / SECONDS_PER_HOUR;
            return Some(Price {
                usd_per_gpu_hour: capex / hours + bm.ops_usd_per_gpu_hour,
                usd_per_joule: bm.pue * bm.usd_per_kwh / JOULES_PER_KWH,
                basis: PriceBasis::BareMetal,
                source: self.bare_metal_source.clone(),
                as_of: "config".into(),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn q<'a>(
        provider: &'a str,
        instance_type: &'a str,
        model: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> PriceQuery<'a> {
        PriceQuery {
            provider,
            instance_type,
            model,
            labels,
        }
    }

    #[test]
    fn the_shipped_catalogue_is_valid_and_every_entry_is_sourced_and_dated() {
        let entries = parse_catalogue(DEFAULT_CATALOGUE, DEFAULT_CATALOGUE_NAME).unwrap();
        assert!(entries.len() >= 20);
        for e in &entries {
            assert!(!e.source.is_empty(), "{e:?}");
            assert!(is_catalogue_date(&e.as_of), "{e:?}");
        }
        let providers: std::collections::BTreeSet<_> =
            entries.iter().filter_map(|e| e.provider.clone()).collect();
        for p in [
            "aws",
            "gcp",
            "azure",
            "oci",
            "coreweave",
            "lambda",
            "nebius",
            "crusoe",
            "runpod",
            "vast",
        ] {
            assert!(providers.contains(p), "no price for {p}");
        }
    }

    #[test]
    fn entries_that_can_never_match_are_named_with_their_line_and_the_known_keys() {
        let shipped = parse_catalogue(DEFAULT_CATALOGUE, DEFAULT_CATALOGUE_NAME).unwrap();
        let user = "[[price]]\nprovider = \"aws\"\nmodel = \"H100\"\nusd_per_gpu_hour = 1.0\n\
                    source = \"x\"\nas_of = \"2026-01\"\n\n\
                    [[price]]\nprovider = \"amazon\"\nmodel = \"H100 80GB\"\n\
                    usd_per_gpu_hour = 1.0\nsource = \"x\"\nas_of = \"2026-01\"\n\n\
                    [[price]]\nprovider = \"on-prem\"\nmodel = \"Quantum 9000\"\n\
                    usd_per_gpu_hour = 1.0\nsource = \"x\"\nas_of = \"2026-01\"\n";
        let entries = parse_catalogue(user, "prices.toml").unwrap();
        let warnings = unknown_keys(&entries, &shipped);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("prices.toml:8: provider \"amazon\"")
                && warnings[0].contains("aws")
                && warnings[0].contains("on-prem"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].starts_with("prices.toml:15: model \"quantum-9000\"")
                && warnings[1].contains("h100"),
            "{}",
            warnings[1]
        );
        // The shipped catalogue knows its own keys.
        assert!(unknown_keys(&shipped, &shipped).is_empty());
    }

    #[test]
    fn nvml_names_map_to_catalogue_keys() {
        for (name, key) in [
            ("NVIDIA H100 80GB HBM3", "h100"),
            ("NVIDIA H100 PCIe", "h100-pcie"),
            ("NVIDIA H100 NVL", "h100-nvl"),
            ("NVIDIA H200", "h200"),
            ("NVIDIA GH200 480GB", "gh200"),
            ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
            ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
            ("NVIDIA A100 80GB PCIe", "a100-80gb"),
            ("NVIDIA L4", "l4"),
            ("NVIDIA L40S", "l40s"),
            ("NVIDIA L40", "l40"),
            ("NVIDIA A10G", "a10g"),
            ("Tesla T4", "t4"),
            ("H100", "h100"),
            ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada-generation"),
        ] {
            assert_eq!(model_key(name), key, "{name}");
        }
    }

    #[test]
    fn the_most_specific_match_wins_and_operator_entries_beat_shipped_ones() {
        let none = labels(&[]);
        let pricing = Pricing::from_texts(None, &BareMetalConfig::default()).unwrap();
        let by_instance = pricing
            .price(&q("aws", "p5.48xlarge", "NVIDIA H100 80GB HBM3", &none))
            .unwrap();
        assert_eq!(by_instance.basis, PriceBasis::InstanceType);
        let by_model = pricing
            .price(&q("AWS", "p5.4xlarge", "NVIDIA H100 80GB HBM3", &none))
            .unwrap();
        assert_eq!(by_model.basis, PriceBasis::Model);
        let misnamed = pricing
            .price(&q("aws", "p5.48xlarge", "NVIDIA A100-SXM4-80GB", &none))
            .unwrap();
        assert_eq!(
            misnamed.basis,
            PriceBasis::Model,
            "the GPU decides over a wrong instance type"
        );
        assert!(
            pricing
                .price(&q("on-prem", "dgx", "NVIDIA H100 80GB HBM3", &none))
                .is_none(),
            "no catalogue entry and no bare-metal capex: unpriced"
        );

        let user = "[[price]]\nprovider = \"aws\"\ninstance_type = \"p5.48xlarge\"\n\
                    usd_per_gpu_hour = 4.10\nsource = \"our contract\"\nas_of = \"2026-10-01\"\n\
                    [[price]]\nprice_class = \"reserved\"\nusd_per_gpu_hour = 2.0\n\
                    source = \"our contract\"\nas_of = \"2026-10\"\n";
        let pricing =
            Pricing::from_texts(Some((user, "ours.toml")), &BareMetalConfig::default()).unwrap();
        let p = pricing
            .price(&q("aws", "p5.48xlarge", "NVIDIA H100 80GB HBM3", &none))
            .unwrap();
        assert_eq!(p.usd_per_gpu_hour, 4.10);
        assert_eq!(&*p.source, "our contract");
        let reserved = labels(&[("price_class", "reserved")]);
        let p = pricing
            .price(&q("lambda2", "", "NVIDIA H100 80GB HBM3", &reserved))
            .unwrap();
        assert_eq!(p.basis, PriceBasis::PriceClass);
    }

    #[test]
    fn bare_metal_amortises_capex_and_adds_operations_and_energy() {
        let bm = BareMetalConfig {
            providers: vec!["on-prem".into()],
            amortization: Duration::from_secs(4 * 365 * 24 * 3600),
            capex_usd_per_gpu: [("H100".to_string(), 37_500.0)].into(),
            pue: 1.3,
            usd_per_kwh: 0.08,
            ops_usd_per_gpu_hour: 0.25,
        };
        let pricing = Pricing::from_texts(None, &bm).unwrap();
        let none = labels(&[]);
        let p = pricing
            .price(&q("on-prem", "dgx-h100", "NVIDIA H100 80GB HBM3", &none))
            .unwrap();
        assert_eq!(p.basis, PriceBasis::BareMetal);
        let hours = 4.0 * 365.0 * 24.0;
        assert!((p.usd_per_gpu_hour - (37_500.0 / hours + 0.25)).abs() < 1e-12);
        assert!((p.usd_per_joule * JOULES_PER_KWH - 1.3 * 0.08).abs() < 1e-12);
        assert!(
            pricing
                .price(&q("on-prem", "", "NVIDIA A100-SXM4-80GB", &none))
                .is_none(),
            "no capex for this model: unpriced"
        );
    }

    #[test]
    fn bad_catalogues_name_the_file_line_and_field() {
        let entry = |body: &str| format!("# header\n\n[[price]]\n{body}");
        for (text, line, field) in [
            (
                entry(
                    "provider = \"aws\"\nmodel = \"h100\"\nusd_per_gpu_hour = -1.0\nsource = \"x\"\nas_of = \"2026-01\"\n",
                ),
                6,
                "usd_per_gpu_hour",
            ),
            (
                entry(
                    "provider = \"aws\"\nmodel = \"h100\"\nusd_per_gpu_hour = 1.0\nas_of = \"2026-01\"\n",
                ),
                3,
                "source",
            ),
            (
                entry(
                    "provider = \"aws\"\nmodel = \"h100\"\nusd_per_gpu_hour = 1.0\nsource = \"x\"\n",
                ),
                3,
                "as_of",
            ),
            (
                entry(
                    "provider = \"aws\"\nmodel = \"h100\"\nusd_per_gpu_hour = 1.0\nsource = \"x\"\nas_of = \"2026-13-01\"\n",
                ),
                8,
                "as_of",
            ),
            (
                entry(
                    "provider = \"aws\"\nusd_per_gpu_hour = 1.0\nsource = \"x\"\nas_of = \"2026-01\"\n",
                ),
                3,
                "provider",
            ),
        ] {
            let err = parse_catalogue(&text, "prices.toml").unwrap_err();
            match &err {
                PricingError::Entry {
                    file,
                    line: l,
                    field: f,
                    ..
                } => {
                    assert_eq!(
                        (file.as_str(), *l, *f),
                        ("prices.toml", line, field),
                        "{err}"
                    );
                }
                other => panic!("{text}: {other}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains("prices.toml") && msg.contains(&format!("line {line}")),
                "{msg}"
            );
        }
        let err = parse_catalogue("[[price]]\nprovder = \"aws\"\n", "prices.toml").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("prices.toml") && msg.contains("provder") && msg.contains("line 2"),
            "{msg}"
        );
    }
}
