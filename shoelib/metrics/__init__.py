"""Measures of a synthetic image set against real product photos, one module per family:

- `results`: the `MetricResult` row every measure returns (value, CI and N, or None and why);
- `features`: feature extractors (weight-free pixels, the demo's image encoder, DINOv2,
  Inception) and the SSCD copy-detection descriptor;
- `clip`: CLIP embeddings and the CLIP score (text alignment);
- `distances`: KID, FD/FID and CMMD between two feature sets;
- `photo`: weight-free photo checks (dominant colour, product-photo conformity);
- `precision_recall`: precision, recall, density, coverage (k nearest neighbours);
- `diversity`: the Vendi score, perceptual-hash near duplicates, pairwise distances;
- `memorisation`: nearest training image of each synthetic one, copies flagged;
- `uncertainty`: bootstrap confidence intervals, the verdict on a difference between runs;
- `controls`: controlled sets built from real photos (sanity checks), the sample-size guide.

Everything is re-exported here, so `from shoelib import metrics as M; M.kid(...)` works.
"""

# The imports below are the package's public names (re-exports), not unused imports.
# ruff: noqa: F401

from shoelib.metrics.clip import (
                                  ClipBundle,
                                  ClipFeatures,
                                  ClipUnavailableError,
                                  clip_image_embeddings,
                                  clip_scores,
                                  clip_text_embeddings,
                                  load_clip,
                                  tiny_random_clip,
)
from shoelib.metrics.distances import _l2, cmmd, fid, frechet_distance, kid, polynomial_mmd, rbf_mmd
from shoelib.metrics.diversity import (
                                  dhash,
                                  diversity_results,
                                  hamming_matrix,
                                  hash_bits,
                                  hash_hex,
                                  mean_pairwise_cosine_distance,
                                  near_duplicates,
                                  phash,
                                  vendi_interval,
                                  vendi_results,
                                  vendi_score,
)
from shoelib.metrics.features import (
                                  DINOV2_DEFAULT,
                                  SSCD_COPY_THRESHOLD,
                                  DinoFeatures,
                                  EncoderFeatures,
                                  FeatureExtractor,
                                  FeatureModelUnavailableError,
                                  PixelFeatures,
                                  RawPixels,
                                  SscdFeatures,
                                  batches,
                                  extract_features,
                                  inception_features,
                                  inception_unavailable,
                                  library_versions,
)
from shoelib.metrics.memorisation import MemorisationReport, memorisation, nearest_neighbours
from shoelib.metrics.photo import (
                                  ACHROMATIC_LIGHTNESS,
                                  COLOUR_SYNONYMS,
                                  PALETTE,
                                  PhotoThresholds,
                                  analysis_pixels,
                                  colour_faithfulness,
                                  conformity_results,
                                  dominant_colour,
                                  foreground_mask,
                                  measure_photos,
                                  palette_name,
                                  photo_measures,
                                  srgb_to_lab,
)
from shoelib.metrics.precision_recall import prdc, prdc_per_image, prdc_results
from shoelib.metrics.results import MetricResult, TooFewImagesError, require_images, results_table
from shoelib.metrics.uncertainty import (
                                  bootstrap_means,
                                  bootstrap_statistic,
                                  mean_ci,
                                  normal_interval,
                                  percentile_interval,
                                  verdict,
                                  with_ci,
)
