//! Shared locations: a point on the map, read from and written as Matrix `geo:` URIs
//! (RFC 5870), and the map link that goes with it in text (OpenStreetMap, which
//! needs no account and tracks nobody).

use serde::{Deserialize, Serialize};

/// A point someone shared, maybe with a place name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Location {
    /// A location with valid coordinates, or `None`.
    pub fn new(latitude: f64, longitude: f64, name: Option<String>) -> Option<Location> {
        let valid = latitude.is_finite()
            && longitude.is_finite()
            && (-90.0..=90.0).contains(&latitude)
            && (-180.0..=180.0).contains(&longitude);
        valid.then(|| Location {
            latitude,
            longitude,
            name: name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()),
        })
    }

    /// Reads a `geo:` URI (`geo:48.8584,2.2945;u=35`); `None` if it is not one.
    pub fn from_geo_uri(uri: &str, name: Option<String>) -> Option<Location> {
        let rest = uri.trim().strip_prefix("geo:")?;
        let coordinates = rest.split(';').next()?;
        let mut parts = coordinates.split(',');
        let latitude = parts.next()?.trim().parse().ok()?;
        let longitude = parts.next()?.trim().parse().ok()?;
        Location::new(latitude, longitude, name)
    }

    /// The `geo:` URI of this point.
    pub fn geo_uri(&self) -> String {
        format!("geo:{:.6},{:.6}", self.latitude, self.longitude)
    }

    /// A link that opens the point on a map in any browser.
    pub fn map_link(&self) -> String {
        format!(
            "https://www.openstreetmap.org/?mlat={lat:.6}&mlon={lon:.6}#map=17/{lat:.6}/{lon:.6}",
            lat = self.latitude,
            lon = self.longitude
        )
    }

    /// "Mairie (https://...)" or the link alone: the location in a line of text.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} ({})", self.map_link()),
            None => self.map_link(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geo_uris_are_read_and_written() {
        let tower = Location::from_geo_uri("geo:48.8584,2.2945;u=35", None).unwrap();
        assert_eq!((tower.latitude, tower.longitude), (48.8584, 2.2945));
        assert_eq!(tower.geo_uri(), "geo:48.858400,2.294500");
        let back = Location::from_geo_uri(&tower.geo_uri(), None).unwrap();
        assert_eq!(back, tower);
    }

    #[test]
    fn nonsense_is_not_a_location() {
        for uri in [
            "",
            "geo:",
            "geo:91,0",
            "geo:0,181",
            "geo:abc,1",
            "http://x",
            "geo:NaN,1",
        ] {
            assert_eq!(Location::from_geo_uri(uri, None), None, "{uri}");
        }
    }

    #[test]
    fn text_names_the_place_and_links_the_map() {
        let mairie = Location::new(45.5, -0.25, Some(" Mairie ".into())).unwrap();
        assert_eq!(
            mairie.describe(),
            "Mairie (https://www.openstreetmap.org/?mlat=45.500000&mlon=-0.250000#map=17/45.500000/-0.250000)"
        );
        let unnamed = Location::new(45.5, -0.25, Some("  ".into())).unwrap();
        assert!(unnamed
            .describe()
            .starts_with("https://www.openstreetmap.org/"));
    }
}
