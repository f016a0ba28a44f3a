//! Layered settings: built-in defaults, then `config/{name}.toml` if present,
//! then environment variables `TERN__SECTION__KEY`.

use serde::{Serialize, de::DeserializeOwned};

/// Why settings could not be loaded. Binaries exit with code 64 on this,
/// before binding anything.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct SettingsError(#[from] config::ConfigError);

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Loads `T` from its defaults, `config/{name}.toml` and `TERN__*` variables.
pub fn load<T>(name: &str) -> Result<T, SettingsError>
where
    T: Default + Serialize + DeserializeOwned,
{
    load_from(name, std::env::vars())
}

/// The command-line flag that makes a binary print every setting it reads
/// with its default, one `TERN__KEY=default` line each, and exit. The
/// deployment checks compare these lists with the manifests and with the
/// lists committed in `deploy/settings/`.
pub const PRINT_SETTINGS: &str = "--print-settings";

/// Every setting of `T` as its environment variable and its default,
/// sorted by name: field `a.b_c` is `TERN__A__B_C`, as
/// [`load`] reads it. Nested settings structs become sections; a
/// flattened one adds its fields to the enclosing section.
pub fn keys<T: Serialize>(defaults: &T) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, value) in fields {
                    walk(&format!("{prefix}__{}", name.to_uppercase()), value, out);
                }
            }
            serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
            serde_json::Value::Null => out.push((prefix.to_string(), String::new())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    let value = serde_json::to_value(defaults).expect("settings serialise to JSON");
    walk("TERN", &value, &mut out);
    out
}

/// Like [`load`], but prints the error and exits with [`EXIT_BAD_CONFIG`]
/// (before anything is bound) when the settings are invalid. Given
/// [`PRINT_SETTINGS`] as its first argument, prints [`keys`] and exits.
pub fn load_or_exit<T>(name: &str) -> T
where
    T: Default + Serialize + DeserializeOwned,
{
    if std::env::args().nth(1).as_deref() == Some(PRINT_SETTINGS) {
        for (key, default) in keys(&T::default()) {
            println!("{key}={default}");
        }
        std::process::exit(0);
    }
    load(name).unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(EXIT_BAD_CONFIG)
    })
}

/// Like [`load`] but with explicit environment variables, for tests.
pub fn load_from<T>(
    name: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let vars: config::Map<String, String> =
        vars.into_iter().filter(|(k, _)| k.starts_with("TERN__")).collect();
    let settings = config::Config::builder()
        .add_source(config::Config::try_from(&T::default())?)
        .add_source(config::File::with_name(&format!("config/{name}")).required(false))
        .add_source(
            config::Environment::with_prefix("TERN")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        )
        .build()?;
    Ok(settings.try_deserialize()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn keys_name_each_setting_as_load_reads_it() {
        let keys = keys(&Demo::default());
        assert_eq!(
            keys,
            [
                ("TERN__HTTP__ADDR".to_string(), "0.0.0.0:8080".to_string()),
                ("TERN__HTTP__MAX_FRAME".to_string(), "10".to_string()),
            ]
        );
        // Each key, set in the environment, is read back.
        let vars = [("TERN__HTTP__MAX_FRAME".to_string(), "99".to_string())];
        let demo: Demo = load_from("none", vars).unwrap();
        assert_eq!(demo.http.max_frame, 99);
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Demo {
        http: Http,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Http {
        addr: String,
        max_frame: u64,
    }

    impl Default for Http {
        fn default() -> Self {
            Self { addr: "0.0.0.0:8080".into(), max_frame: 10 }
        }
    }

    #[test]
    fn environment_overrides_defaults() {
        let vars = [("TERN__HTTP__MAX_FRAME".to_string(), "99".to_string())];
        let demo: Demo = load_from("does-not-exist", vars).unwrap();
        assert_eq!(demo.http.max_frame, 99);
        assert_eq!(demo.http.addr, "0.0.0.0:8080");
    }

    #[test]
    fn wrong_types_are_errors() {
        let vars = [("TERN__HTTP__MAX_FRAME".to_string(), "lots".to_string())];
        assert!(load_from::<Demo>("does-not-exist", vars).is_err());
    }
}
