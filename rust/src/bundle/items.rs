//! The items file (`items.json`): external ids and their map to rows, titles, and attributes.

use std::collections::BTreeMap;
use std::path::Path;

use rustc_hash::FxHashMap;
use serde::Deserialize;

use super::config::{IntentConfig, RawConfig, SteerConfig, FAMILIES_FROM};
use super::{read_text, BundleError, CONFIG_FILE};

/// An item's external id, as the dataset spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ItemId {
    Int(i64),
    Str(String),
}

/// External id → model row (1..=N).
#[derive(Debug, Clone)]
pub enum IdRows {
    /// Integer ids spanning a range not much wider than the catalogue (the common case):
    /// `rows[id - first]` is the row, 0 where no item has that id.
    Dense {
        first: i64,
        rows: Vec<u32>,
    },
    Map(FxHashMap<ItemId, u32>),
}

impl Default for IdRows {
    fn default() -> Self {
        Self::Map(FxHashMap::default())
    }
}

impl IdRows {
    /// The map of `ids` (row `i + 1` has `ids[i]`); `Err(i)` when `ids[i]` repeats an earlier id.
    pub fn new(ids: &[ItemId]) -> Result<Self, usize> {
        let ints = ids.iter().map(|id| match id {
            ItemId::Int(x) => Some(*x),
            ItemId::Str(_) => None,
        });
        let span = ints
            .clone()
            .try_fold((i64::MAX, i64::MIN), |(lo, hi), x| {
                x.map(|x| (lo.min(x), hi.max(x)))
            })
            .and_then(|(lo, hi)| Some((lo, usize::try_from(hi.checked_sub(lo)?).ok()?)));
        match span {
            Some((first, width)) if width < 2 * ids.len() + 1024 => {
                let mut rows = vec![0u32; width + 1];
                for (i, x) in ints.enumerate() {
                    let slot = &mut rows[(x.unwrap_or(first) - first) as usize];
                    if *slot != 0 {
                        return Err(i);
                    }
                    *slot = i as u32 + 1;
                }
                Ok(Self::Dense { first, rows })
            }
            _ => {
                let mut map = FxHashMap::with_capacity_and_hasher(ids.len(), Default::default());
                for (i, id) in ids.iter().enumerate() {
                    if map.insert(id.clone(), i as u32 + 1).is_some() {
                        return Err(i);
                    }
                }
                Ok(Self::Map(map))
            }
        }
    }

    /// The row of `id`, if an item has it.
    pub fn get(&self, id: &ItemId) -> Option<u32> {
        match (self, id) {
            (Self::Dense { first, rows }, ItemId::Int(x)) => {
                let slot = usize::try_from(x.checked_sub(*first)?).ok()?;
                rows.get(slot).copied().filter(|&row| row != 0)
            }
            (Self::Dense { .. }, ItemId::Str(_)) => None,
            (Self::Map(map), id) => map.get(id).copied(),
        }
    }
}

/// One item attribute: its values (column order) and, per row, the value indices it has.
#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub values: Vec<String>,
    /// `(N+1) × values.len()` 0/1 matrix, row 0 (padding) all zero.
    pub matrix: Vec<u8>,
}

impl Attribute {
    pub fn width(&self) -> usize {
        self.values.len()
    }

    /// The value indices item `row` has.
    pub fn values_of(&self, row: usize) -> impl Iterator<Item = usize> + '_ {
        let w = self.width();
        self.matrix[row * w..(row + 1) * w]
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0)
            .map(|(j, _)| j)
    }

    pub fn has(&self, row: usize, value: usize) -> bool {
        self.matrix[row * self.width() + value] != 0
    }
}

#[derive(Deserialize)]
pub(super) struct RawAttribute {
    pub(super) values: Vec<String>,
    pub(super) items: Vec<Vec<usize>>,
}

#[derive(Deserialize)]
struct RawItems {
    ids: Vec<serde_json::Value>,
    titles: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, RawAttribute>,
}

pub(super) struct Items {
    pub(super) ids: Vec<ItemId>,
    pub(super) id_rows: IdRows,
    pub(super) titles: Vec<String>,
    pub(super) attributes: BTreeMap<String, RawAttribute>,
}

pub(super) fn read_items(root: &Path, raw: &RawConfig) -> Result<Items, BundleError> {
    let name = raw.items.file.as_str();
    let text = read_text(root, name)?;
    let items: RawItems =
        serde_json::from_str(&text).map_err(|e| BundleError::items(name, "", e.to_string()))?;
    let n = raw.num_items;
    for (field, len) in [("ids", items.ids.len()), ("titles", items.titles.len())] {
        if len != n {
            return Err(BundleError::items(
                name,
                field,
                format!("{field} has {len} entries, {CONFIG_FILE} num_items={n}"),
            ));
        }
    }
    let mut ids = Vec::with_capacity(n);
    for (i, v) in items.ids.iter().enumerate() {
        ids.push(match v {
            serde_json::Value::String(s) => ItemId::Str(s.clone()),
            serde_json::Value::Number(x) if x.as_i64().is_some() => {
                ItemId::Int(x.as_i64().unwrap_or_default())
            }
            other => {
                return Err(BundleError::items(
                    name,
                    "ids",
                    format!("ids[{i}] is {other}, not a string or integer"),
                ))
            }
        });
    }
    let id_rows = IdRows::new(&ids).map_err(|i| {
        BundleError::items(
            name,
            "ids",
            format!("ids[{i}] = {} is a duplicate", items.ids[i]),
        )
    })?;
    for (attr, a) in &items.attributes {
        if a.items.len() != n {
            return Err(BundleError::items(
                name,
                &format!("attributes.{attr}.items"),
                format!(
                    "attributes.{attr}.items has {} rows, num_items={n}",
                    a.items.len()
                ),
            ));
        }
        if let Some((row, bad)) = a
            .items
            .iter()
            .enumerate()
            .find_map(|(r, vs)| vs.iter().find(|&&v| v >= a.values.len()).map(|&v| (r, v)))
        {
            return Err(BundleError::items(
                name,
                &format!("attributes.{attr}.items"),
                format!(
                    "attributes.{attr}.items[{row}] holds value index {bad}, beyond its {} values",
                    a.values.len()
                ),
            ));
        }
    }
    check_steer_families(raw.version, &raw.steer, &items.attributes, name)?;
    if let Some(intent) = &raw.intent {
        check_intent_values(intent, &items.attributes, name)?;
    }
    Ok(Items {
        ids,
        id_rows,
        titles: items.titles,
        attributes: items.attributes,
    })
}

/// Every steered family is an attribute of the items file, and every value it lists is one of
/// that attribute's values (any order). Before version 4 the one family `steer.attribute` has
/// exactly the attribute's values, in the same order, as those versions define.
fn check_steer_families(
    version: i64,
    steer: &SteerConfig,
    attributes: &BTreeMap<String, RawAttribute>,
    items_file: &str,
) -> Result<(), BundleError> {
    for (i, family) in steer.families.iter().enumerate() {
        let name = &family.name;
        let attribute = attributes.get(name);
        if version < FAMILIES_FROM {
            if attribute.map(|a| &a.values) != Some(&family.values) {
                return Err(BundleError::items(
                    items_file,
                    &format!("attributes.{name}.values"),
                    format!("attributes.{name}.values differ from {CONFIG_FILE} steer.values"),
                ));
            }
            continue;
        }
        let problem = match attribute {
            None => format!("{items_file} has no attribute {name:?}"),
            Some(a) => {
                let known: std::collections::HashSet<&str> =
                    a.values.iter().map(String::as_str).collect();
                match family.values.iter().find(|v| !known.contains(v.as_str())) {
                    None => continue,
                    Some(value) => {
                        format!("{value:?} is not one of {items_file} attributes.{name}.values")
                    }
                }
            }
        };
        return Err(BundleError::config(
            "steer.families",
            format!("steer.families[{i}] ({name:?}): {problem}"),
        ));
    }
    Ok(())
}

/// Every `(family, value)` of the intent head is a value of that attribute in `items.json`.
fn check_intent_values(
    intent: &IntentConfig,
    attributes: &BTreeMap<String, RawAttribute>,
    items_file: &str,
) -> Result<(), BundleError> {
    for (i, (family, value)) in intent.values.iter().enumerate() {
        let problem = match attributes.get(family) {
            None => format!("{items_file} has no attribute {family:?}"),
            Some(a) if !a.values.contains(value) => {
                format!("{items_file} attributes.{family}.values has no value {value:?}")
            }
            Some(_) => continue,
        };
        return Err(BundleError::config(
            "intent.values",
            format!("intent.values[{i}] = [{family:?}, {value:?}]: {problem}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::SteerFamily;

    fn ints(xs: &[i64]) -> Vec<ItemId> {
        xs.iter().map(|&x| ItemId::Int(x)).collect()
    }

    /// The attributes of an items file: genre and decade (no item has any of them).
    fn genre_and_decade() -> BTreeMap<String, RawAttribute> {
        let attribute = |values: &[&str]| RawAttribute {
            values: values.iter().map(|v| v.to_string()).collect(),
            items: Vec::new(),
        };
        BTreeMap::from([
            ("genre".into(), attribute(&["Action", "Comedy", "Drama"])),
            ("decade".into(), attribute(&["1990s", "2000s"])),
        ])
    }

    /// A steering configuration steering `families`.
    fn steering(families: &[(&str, &[&str])]) -> SteerConfig {
        let families: Vec<SteerFamily> = families
            .iter()
            .map(|(name, values)| SteerFamily {
                name: name.to_string(),
                values: values.iter().map(|v| v.to_string()).collect(),
            })
            .collect();
        let mut steer: SteerConfig = serde_json::from_value(serde_json::json!({
            "attribute_dim": families.iter().map(|f| f.values.len()).sum::<usize>(),
            "prompt_dim": 8, "positive_experts": 1, "negative_experts": 1,
            "projector_hidden": 3, "expert_hidden": 3, "router_hidden": 3}))
        .unwrap();
        steer.families = families;
        steer
    }

    #[test]
    fn steered_families_are_attributes_of_the_items_file_in_any_order() {
        let attributes = genre_and_decade();
        let check = |version, families: &[(&str, &[&str])]| {
            check_steer_families(version, &steering(families), &attributes, "items.json")
        };
        let genre: (&str, &[&str]) = ("genre", &["Drama", "Action"]);
        assert_eq!(check(4, &[genre, ("decade", &["2000s", "1990s"])]), Ok(()));
        assert_eq!(check(4, &[]), Ok(()));
        let config_error =
            |message: &str| Err(BundleError::config("steer.families", message.to_owned()));
        assert_eq!(
            check(4, &[genre, ("mood", &["Dark"])]),
            config_error(r#"steer.families[1] ("mood"): items.json has no attribute "mood""#)
        );
        assert_eq!(
            check(4, &[("decade", &["1990s", "1980s"])]),
            config_error(
                r#"steer.families[0] ("decade"): "1980s" is not one of items.json attributes.decade.values"#
            )
        );
        // Before version 4 the one family is the whole attribute, in its own order.
        assert_eq!(
            check(3, &[("genre", &["Action", "Comedy", "Drama"])]),
            Ok(())
        );
        for values in [&["Drama", "Action", "Comedy"][..], &["Action", "Comedy"]] {
            assert_eq!(
                check(3, &[("genre", values)]),
                Err(BundleError::items(
                    "items.json",
                    "attributes.genre.values",
                    "attributes.genre.values differ from dpr.json steer.values"
                ))
            );
        }
    }

    #[test]
    fn id_rows_map_every_id_to_its_row_dense_or_not() {
        let cases = [
            ints(&[7, 3, -2, 10]),             // dense, negative ids allowed
            ints(&[5, i64::MAX, i64::MIN, 0]), // span overflows i64: hashed
            ints(&[1, 1_000_000_000]),         // sparse: hashed
            vec![
                ItemId::Str("a".into()),
                ItemId::Int(4),
                ItemId::Str("4".into()),
            ],
        ];
        for ids in cases {
            let rows = IdRows::new(&ids).expect("no duplicates");
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(rows.get(id), Some(i as u32 + 1), "{id:?} in {ids:?}");
            }
            for missing in [
                ItemId::Int(6),
                ItemId::Int(i64::MIN + 1),
                ItemId::Str("b".into()),
            ] {
                assert_eq!(rows.get(&missing), None, "{missing:?} in {ids:?}");
            }
        }
        assert!(matches!(
            IdRows::new(&ints(&[3, 1, 2])),
            Ok(IdRows::Dense { .. })
        ));
        assert!(matches!(
            IdRows::new(&ints(&[1, 1 << 40])),
            Ok(IdRows::Map(_))
        ));
        assert!(matches!(IdRows::new(&[]), Ok(IdRows::Map(_))));
    }

    #[test]
    fn id_rows_report_the_first_repeat() {
        assert_eq!(IdRows::new(&ints(&[4, 5, 4])).err(), Some(2));
        assert_eq!(IdRows::new(&ints(&[1, 1 << 40, 1 << 40])).err(), Some(2));
        let strs = [ItemId::Str("x".into()), ItemId::Str("x".into())];
        assert_eq!(IdRows::new(&strs).err(), Some(1));
    }
}
