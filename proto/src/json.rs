//! Serialisers used by the generated code so that enum fields appear by name in JSON.

use serde::Serializer;

use crate::v1::{Classification, OwaspCategory, Protocol, Severity};

macro_rules! by_name {
    ($fn_name:ident, $enum:ty) => {
        /// Serialises the enum's proto name, or the raw number when it is not a known value.
        pub fn $fn_name<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
            match <$enum>::try_from(*value) {
                Ok(known) => serializer.serialize_str(known.as_str_name()),
                Err(_) => serializer.serialize_i32(*value),
            }
        }
    };
}

by_name!(protocol, Protocol);
by_name!(classification, Classification);
by_name!(severity, Severity);
by_name!(category, OwaspCategory);
