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

/// Like [`load`], but prints the error and exits with [`EXIT_BAD_CONFIG`]
/// (before anything is bound) when the settings are invalid.
pub fn load_or_exit<T>(name: &str) -> T
where
    T: Default + Serialize + DeserializeOwned,
{
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
