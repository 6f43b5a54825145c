//! QR codes as images for browsers (PNG, SVG) and as block drawings for terminals.

use std::io::Cursor;

use qrcode::render::{svg, unicode};
use qrcode::QrCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrFormat {
    Png,
    Svg,
    Text,
    Raw,
}

impl QrFormat {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "png" => Some(Self::Png),
            "svg" => Some(Self::Svg),
            "text" => Some(Self::Text),
            "raw" => Some(Self::Raw),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Svg => "image/svg+xml",
            Self::Text | Self::Raw => "text/plain; charset=utf-8",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot render the QR code: {0}")]
pub struct QrError(String);

pub fn render(data: &str, format: QrFormat) -> Result<Vec<u8>, QrError> {
    if format == QrFormat::Raw {
        return Ok(data.as_bytes().to_vec());
    }
    let code = QrCode::new(data.as_bytes()).map_err(|e| QrError(e.to_string()))?;
    Ok(match format {
        QrFormat::Png => {
            let image = code.render::<image::Luma<u8>>().min_dimensions(264, 264).build();
            let mut bytes = Vec::new();
            image
                .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
                .map_err(|e| QrError(e.to_string()))?;
            bytes
        }
        QrFormat::Svg => code.render::<svg::Color<'_>>().min_dimensions(264, 264).build().into_bytes(),
        QrFormat::Text => {
            let mut text = code.render::<unicode::Dense1x2>().quiet_zone(true).build();
            text.push('\n');
            text.into_bytes()
        }
        QrFormat::Raw => unreachable!("handled above"),
    })
}

/// `data:image/png;base64,...` (the compat API's shape).
pub fn png_data_url(data: &str) -> Result<String, QrError> {
    use base64::Engine;
    let png = render(data, QrFormat::Png)?;
    Ok(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_renders() {
        let data = "2@ref,key,key,key,9";
        assert!(render(data, QrFormat::Png).unwrap().starts_with(b"\x89PNG"));
        assert!(String::from_utf8(render(data, QrFormat::Svg).unwrap()).unwrap().contains("<svg"));
        assert!(String::from_utf8(render(data, QrFormat::Text).unwrap()).unwrap().contains('█'));
        assert_eq!(render(data, QrFormat::Raw).unwrap(), data.as_bytes());
        assert!(png_data_url(data).unwrap().starts_with("data:image/png;base64,iVBOR"));
    }
}
