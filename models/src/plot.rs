//! SVG plot of file size against KL divergence.
