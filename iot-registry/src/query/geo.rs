//! Positions on the Earth and the areas geo conditions name: `WITHIN_BOX` and `WITHIN_DISTANCE`.
//!
//! A position is an object with a numeric `lat` (degrees, −90 to 90) and `lon` (degrees, −180 to
//! 180): `metadata.location = {"lat": 47.64, "lon": -122.13}`. Both members are ordinary scalar
//! paths, so every registry already indexes them; a geo condition is answered from those two
//! ordered indexes (a latitude range intersected with one or two longitude ranges), and a
//! distance condition then checks the candidates inside its bounding box exactly.
//!
//! Distances are great-circle distances on a sphere of the Earth's mean radius
//! ([`EARTH_RADIUS_M`]), by the haversine formula: within 0.5 % of the ellipsoid's, which is what a
//! fleet map needs and what every backend can compute the same way.

use std::f64::consts::PI;

/// The Earth's mean radius in metres (IUGG), the sphere distances are measured on.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// The bounding box of a distance condition is widened by this many degrees (about a
/// centimetre), so that rounding never leaves a point the exact check accepts outside it.
const BOX_MARGIN_DEG: f64 = 1e-7;

/// An area of the Earth's surface, as a geo condition names it.
///
/// ```
/// use iot_registry::query::GeoArea;
///
/// // 5 km around the Space Needle.
/// let near = GeoArea::circle(47.6205, -122.3493, 5_000.0).unwrap();
/// assert!(near.contains(47.6097, -122.3422)); // Pike Place Market, 1.3 km away
/// assert!(!near.contains(47.4502, -122.3088)); // the airport, 19 km away
/// // A box across the antimeridian: west > east.
/// let fiji = GeoArea::bbox(-21.0, 176.0, -12.0, -178.0).unwrap();
/// assert!(fiji.contains(-17.7, 178.1) && fiji.contains(-16.0, -179.9));
/// assert!(!fiji.contains(-17.7, 170.0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum GeoArea {
    /// `WITHIN_BOX(path, south, west, north, east)`: latitudes `south..=north`, longitudes
    /// `west..=east`, or, when `west > east`, the box crosses the antimeridian and holds
    /// longitudes `>= west` or `<= east`.
    Box {
        /// Southern edge, degrees.
        south: f64,
        /// Western edge, degrees.
        west: f64,
        /// Northern edge, degrees.
        north: f64,
        /// Eastern edge, degrees.
        east: f64,
    },
    /// `WITHIN_DISTANCE(path, lat, lon, metres)`: positions at most `radius_m` metres from the
    /// centre along the sphere.
    Circle {
        /// Latitude of the centre, degrees.
        lat: f64,
        /// Longitude of the centre, degrees.
        lon: f64,
        /// Radius in metres.
        radius_m: f64,
    },
}

/// Why an area's numbers do not describe one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidArea(pub(crate) String);

impl std::fmt::Display for InvalidArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidArea {}

/// The latitude and longitude ranges (closed) that hold an area: what an index is asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GeoBounds {
    /// Lowest and highest latitude.
    pub lat: (f64, f64),
    /// One longitude range, or two when the area crosses the antimeridian.
    pub lon: [Option<(f64, f64)>; 2],
}

impl GeoArea {
    /// A box; `south <= north`, latitudes within ±90 and longitudes within ±180.
    pub fn bbox(south: f64, west: f64, north: f64, east: f64) -> Result<Self, InvalidArea> {
        check_lat("south", south)?;
        check_lat("north", north)?;
        check_lon("west", west)?;
        check_lon("east", east)?;
        if south > north {
            return Err(InvalidArea(format!(
                "the box's south edge {south} is north of its north edge {north}"
            )));
        }
        Ok(GeoArea::Box {
            south,
            west,
            north,
            east,
        })
    }

    /// A circle of `radius_m` metres (finite, not negative) around a valid position.
    pub fn circle(lat: f64, lon: f64, radius_m: f64) -> Result<Self, InvalidArea> {
        check_lat("the centre's latitude", lat)?;
        check_lon("the centre's longitude", lon)?;
        if !(radius_m.is_finite() && radius_m >= 0.0) {
            return Err(InvalidArea(format!(
                "the distance must be a finite number of metres, not negative: got {radius_m}"
            )));
        }
        Ok(GeoArea::Circle { lat, lon, radius_m })
    }

    /// Whether the area holds the position. A position outside the valid ranges (or not
    /// finite) is in no area.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        if !is_position(lat, lon) {
            return false;
        }
        match *self {
            GeoArea::Box {
                south,
                west,
                north,
                east,
            } => {
                (south..=north).contains(&lat)
                    && if west <= east {
                        (west..=east).contains(&lon)
                    } else {
                        lon >= west || lon <= east
                    }
            }
            GeoArea::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => distance_m(clat, clon, lat, lon) <= radius_m,
        }
    }

    /// Whether every position in [`GeoArea::bounds`] is in the area (a box), so that an index
    /// answer needs no further check.
    pub fn bounds_are_exact(&self) -> bool {
        matches!(self, GeoArea::Box { .. })
    }

    /// The latitude and longitude ranges that hold the area (for a circle, its bounding box).
    pub fn bounds(&self) -> GeoBounds {
        match *self {
            GeoArea::Box {
                south,
                west,
                north,
                east,
            } => GeoBounds {
                lat: (south, north),
                lon: if west <= east {
                    [Some((west, east)), None]
                } else {
                    [Some((west, 180.0)), Some((-180.0, east))]
                },
            },
            GeoArea::Circle { lat, lon, radius_m } => circle_bounds(lat, lon, radius_m),
        }
    }
}

/// Whether `(lat, lon)` is a position: finite, latitude within ±90, longitude within ±180.
pub fn is_position(lat: f64, lon: f64) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}

/// The great-circle distance in metres between two positions, by the haversine formula on a
/// sphere of radius [`EARTH_RADIUS_M`].
///
/// ```
/// use iot_registry::query::geo_distance_m;
/// let d = geo_distance_m(51.5007, -0.1246, 48.8584, 2.2945); // Big Ben to the Eiffel Tower
/// assert!((d - 340_600.0).abs() < 1_000.0);
/// ```
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// The bounding box of a spherical cap (J. P. Matuschek's method): the latitude range is the
/// centre's ± the angular radius; the longitude half-width is `asin(sin δ / cos φ)`, and a cap
/// that reaches a pole spans every longitude.
fn circle_bounds(lat: f64, lon: f64, radius_m: f64) -> GeoBounds {
    let delta = radius_m / EARTH_RADIUS_M;
    let everywhere = GeoBounds {
        lat: (-90.0, 90.0),
        lon: [Some((-180.0, 180.0)), None],
    };
    if delta >= PI {
        return everywhere;
    }
    let delta_deg = delta.to_degrees() + BOX_MARGIN_DEG;
    let (south, north) = (lat - delta_deg, lat + delta_deg);
    if south <= -90.0 || north >= 90.0 {
        return GeoBounds {
            lat: (south.max(-90.0), north.min(90.0)),
            lon: [Some((-180.0, 180.0)), None],
        };
    }
    let ratio = delta.sin() / lat.to_radians().cos();
    if ratio >= 1.0 {
        return GeoBounds {
            lat: (south, north),
            lon: [Some((-180.0, 180.0)), None],
        };
    }
    let half = ratio.asin().to_degrees() + BOX_MARGIN_DEG;
    let (west, east) = (lon - half, lon + half);
    let lon = if west < -180.0 {
        [Some((west + 360.0, 180.0)), Some((-180.0, east))]
    } else if east > 180.0 {
        [Some((west, 180.0)), Some((-180.0, east - 360.0))]
    } else {
        [Some((west, east)), None]
    };
    GeoBounds {
        lat: (south, north),
        lon,
    }
}

fn check_lat(what: &str, lat: f64) -> Result<(), InvalidArea> {
    if (-90.0..=90.0).contains(&lat) {
        Ok(())
    } else {
        Err(InvalidArea(format!(
            "{what} must be a latitude from -90 to 90, got {lat}"
        )))
    }
}

fn check_lon(what: &str, lon: f64) -> Result<(), InvalidArea> {
    if (-180.0..=180.0).contains(&lon) {
        Ok(())
    } else {
        Err(InvalidArea(format!(
            "{what} must be a longitude from -180 to 180, got {lon}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_distances() {
        // New York JFK to London Heathrow: 5 540 km on the mean sphere.
        let d = distance_m(40.6413, -73.7781, 51.4700, -0.4543);
        assert!((d - 5_540_000.0).abs() < 10_000.0, "{d}");
        assert_eq!(distance_m(10.0, 20.0, 10.0, 20.0), 0.0);
        // Half the circumference between antipodes.
        let half = distance_m(0.0, 0.0, 0.0, 180.0);
        assert!((half - PI * EARTH_RADIUS_M).abs() < 1e-6, "{half}");
    }

    #[test]
    fn invalid_areas_are_refused_with_what_is_wrong() {
        let e = GeoArea::bbox(10.0, 0.0, 5.0, 1.0).unwrap_err();
        assert!(e.to_string().contains("south edge 10"), "{e}");
        assert!(GeoArea::bbox(-91.0, 0.0, 5.0, 1.0).is_err());
        assert!(GeoArea::bbox(0.0, 0.0, 5.0, 181.0).is_err());
        assert!(GeoArea::circle(0.0, 0.0, -1.0).is_err());
        assert!(GeoArea::circle(0.0, 0.0, f64::INFINITY).is_err());
        assert!(GeoArea::circle(0.0, 200.0, 1.0).is_err());
    }

    #[test]
    fn caps_over_a_pole_or_the_antimeridian_have_wide_bounds() {
        let polar = circle_bounds(89.0, 10.0, 500_000.0);
        assert_eq!(polar.lon, [Some((-180.0, 180.0)), None]);
        assert_eq!(polar.lat.1, 90.0);
        let dateline = circle_bounds(0.0, 179.9, 50_000.0);
        assert!(dateline.lon[1].is_some(), "{dateline:?}");
        assert!(
            GeoArea::circle(0.0, 179.9, 50_000.0)
                .unwrap()
                .contains(0.0, -179.9)
        );
    }

    fn in_bounds(b: &GeoBounds, lat: f64, lon: f64) -> bool {
        (b.lat.0..=b.lat.1).contains(&lat)
            && b.lon
                .iter()
                .flatten()
                .any(|(w, e)| (*w..=*e).contains(&lon))
    }

    proptest! {
        // The index answers from the bounds and checks only inside them: a position the exact
        // test accepts must never lie outside them.
        #[test]
        fn a_circle_lies_inside_its_bounds(
            clat in -90.0f64..=90.0, clon in -180.0f64..=180.0,
            radius in prop_oneof![0.0f64..5_000.0, 0.0f64..2_000_000.0, 0.0f64..30_000_000.0],
            bearing in 0.0f64..360.0, fraction in 0.0f64..=1.0,
        ) {
            let area = GeoArea::circle(clat, clon, radius).unwrap();
            // A point `fraction * radius` away along `bearing` (the destination formula).
            let d = fraction * radius / EARTH_RADIUS_M;
            let (p1, l1, b) = (clat.to_radians(), clon.to_radians(), bearing.to_radians());
            let p2 = (p1.sin() * d.cos() + p1.cos() * d.sin() * b.cos()).clamp(-1.0, 1.0).asin();
            let l2 = l1 + (b.sin() * d.sin() * p1.cos()).atan2(d.cos() - p1.sin() * p2.sin());
            let lat = p2.to_degrees();
            let lon = (l2.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
            if area.contains(lat, lon) {
                prop_assert!(in_bounds(&area.bounds(), lat, lon), "{lat},{lon} {:?}", area.bounds());
            }
        }

        #[test]
        fn a_box_is_exactly_its_bounds(
            s in -90.0f64..=90.0, n in -90.0f64..=90.0,
            w in -180.0f64..=180.0, e in -180.0f64..=180.0,
            lat in -90.0f64..=90.0, lon in -180.0f64..=180.0,
        ) {
            let area = GeoArea::bbox(s.min(n), w, s.max(n), e).unwrap();
            prop_assert_eq!(area.contains(lat, lon), in_bounds(&area.bounds(), lat, lon));
        }
    }
}
