/**
 * The rotary frequencies of each rope type transformers' Nemotron reads (ROPE_INIT_FUNCTIONS in
 * modeling_rope_utils.py), computed as torch computes them: in float32, rounded after every operation.
 */

/** The scaled rope types (config.json's rope_parameters.rope_type other than "default"). */
export const ROPE_TYPES = ['linear', 'dynamic', 'yarn', 'llama3', 'longrope'] as const;
export type RopeType = (typeof ROPE_TYPES)[number];

/** rope_parameters (rope_scaling in transformers 4) camelCased; which fields a type reads is said on each. */
export interface RopeScaling {
  ropeType: RopeType;
  /** linear, dynamic, yarn, llama3: the context extension factor; longrope: optional (default max / original). */
  factor?: number;
  /** yarn, llama3, longrope: the pretraining context length (default max_position_embeddings). */
  originalMaxPositionEmbeddings?: number;
  /** yarn, longrope: the scale of cos and sin (default from factor). */
  attentionFactor?: number;
  /** yarn: the rotation counts that bound the blend of extrapolated and interpolated frequencies (32 and 1). */
  betaFast?: number;
  betaSlow?: number;
  /** yarn: DeepSeek's attention factor get_mscale(factor, mscale) / get_mscale(factor, mscaleAllDim). */
  mscale?: number;
  mscaleAllDim?: number;
  /** yarn: round the blend's bounds to whole dimensions (default true). */
  truncate?: boolean;
  /** llama3: wavelengths above original / lowFreqFactor are divided by factor, below original / highFreqFactor kept. */
  lowFreqFactor?: number;
  highFreqFactor?: number;
  /** longrope: per-frequency divisors up to the original length, and beyond it. */
  shortFactor?: number[];
  longFactor?: number[];
}

/** inv_freq (rotaryDim / 2 values) and the factor cos and sin are multiplied by. */
export interface RopeFrequencies {
  invFreq: Float32Array;
  attentionScaling: number;
}

const f = Math.fround;

/** base^(2i/dim) for i < dim/2, as torch's `base ** (arange(0, dim, 2).float() / dim)`. */
function powers(base: number, dim: number): Float32Array {
  return Float32Array.from({ length: dim / 2 }, (_, i) => f(Math.pow(f(base), f((2 * i) / dim))));
}

/** The frequencies of the plain rope: 1 / base^(2i/dim). */
export function defaultFrequencies(base: number, dim: number): RopeFrequencies {
  return { invFreq: powers(base, dim).map((p) => f(1 / p)), attentionScaling: 1 };
}

/** yarn's attention factor: 0.1·mscale·ln(scale) + 1 above scale 1. */
function yarnMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/**
 * The frequencies for a rope type. `seqLen`: the longest sequence of the call (max position + 1), which dynamic and
 * longrope read; undefined at initialisation, as transformers builds the model.
 */
export function ropeFrequencies(scaling: RopeScaling | null, base: number, dim: number, maxPositions: number, seqLen?: number): RopeFrequencies {
  if (!scaling) return defaultFrequencies(base, dim);
  const original = scaling.originalMaxPositionEmbeddings ?? maxPositions;
  switch (scaling.ropeType) {
    case 'linear': {
      const { invFreq } = defaultFrequencies(base, dim);
      return { invFreq: invFreq.map((v) => f(v / scaling.factor!)), attentionScaling: 1 };
    }
    case 'dynamic': {
      // NTK-aware: the base grows with the sequence beyond max_position_embeddings (in float32: the length is a tensor).
      const length = Math.max(seqLen ?? maxPositions, maxPositions);
      const factor = scaling.factor!;
      const stretch = f(f(f(f(factor * length) / maxPositions) - (factor - 1)) ** (dim / (dim - 2)));
      return defaultFrequencies(f(base * stretch), dim);
    }
    case 'yarn': {
      const factor = scaling.factor ?? maxPositions / original;
      let attention = scaling.attentionFactor;
      if (attention === undefined) {
        attention = scaling.mscale && scaling.mscaleAllDim
          ? yarnMscale(factor, scaling.mscale) / yarnMscale(factor, scaling.mscaleAllDim)
          : yarnMscale(factor);
      }
      const betaFast = scaling.betaFast || 32;
      const betaSlow = scaling.betaSlow || 1;
      // The dimension at which a frequency turns `rotations` times over the original length.
      const dimensionOf = (rotations: number) => (dim * Math.log(original / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
      let low = dimensionOf(betaFast);
      let high = dimensionOf(betaSlow);
      if (scaling.truncate ?? true) [low, high] = [Math.floor(low), Math.ceil(high)];
      [low, high] = [Math.max(low, 0), Math.min(high, dim - 1)];
      if (low === high) high += 0.001;
      const p = powers(base, dim);
      const invFreq = p.map((power, i) => {
        const extrapolated = f(1 / power);
        const interpolated = f(1 / f(factor * power));
        const ramp = Math.min(1, Math.max(0, f(f(i - low) / f(high - low))));
        const keep = f(1 - ramp); // the share of the extrapolated (unscaled) frequency
        return f(f(interpolated * f(1 - keep)) + f(extrapolated * keep));
      });
      return { invFreq, attentionScaling: attention };
    }
    case 'llama3': {
      const { invFreq } = defaultFrequencies(base, dim);
      const { factor, lowFreqFactor, highFreqFactor } = scaling as Required<RopeScaling>;
      const lowWavelength = original / lowFreqFactor;
      const highWavelength = original / highFreqFactor;
      return {
        invFreq: invFreq.map((v) => {
          // torch's scalar / tensor is reciprocal(tensor) · scalar.
          const wavelength = f(f(1 / v) * f(2 * Math.PI));
          const scaled = wavelength > lowWavelength ? f(v / factor) : v;
          if (wavelength < highWavelength || wavelength > lowWavelength) return scaled;
          const smooth = f(f(f(f(1 / wavelength) * original) - lowFreqFactor) / (highFreqFactor - lowFreqFactor));
          return f(f(f(f(1 - smooth) * scaled) / factor) + f(smooth * scaled));
        }),
        attentionScaling: 1,
      };
    }
    case 'longrope': {
      const factor = scaling.factor ?? maxPositions / original;
      const attention = scaling.attentionFactor ?? (factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original)));
      const factors = seqLen !== undefined && seqLen > original ? scaling.longFactor! : scaling.shortFactor!;
      return { invFreq: powers(base, dim).map((p, i) => f(1 / f(f(factors[i]) * p))), attentionScaling: attention };
    }
  }
}
