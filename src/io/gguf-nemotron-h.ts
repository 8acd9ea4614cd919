/**
 * NemotronH in GGUF (llama.cpp's `nemotron_h` and `nemotron_h_moe` architectures: Nemotron-H, Nemotron Nano 2,
 * Nemotron 3 Nano), read and written as llama.cpp's convert_hf_to_gguf.py (NemotronHModel) writes it:
 *
 * - the layer kinds are not listed: a layer is attention where it has attn_q, Mamba-2 where it has ssm_in, an MLP or
 *   experts where it has ffn_up / ffn_up_exps (llama.cpp reads them from the per-layer head_count_kv and
 *   feed_forward_length arrays, zero where a layer has none; both are written);
 * - A is stored, not A_log (A = -exp(A_log), [heads, 1]); D as [heads, 1]; conv1d as [channels, kernel]; the gated
 *   norm as [groups, inner / groups]; dt_bias as `ssm_dt.bias`; the router's correction bias as `exp_probs_b.bias`;
 *   the experts stacked (`ffn_up_exps` [experts, ffn, width]);
 * - the attention q/k rows permuted within each head (Llama's undo_permute, which the converter's GraniteHybridModel
 *   base turns on; attention here has no rotary embedding, so the scores do not change, but the weights do).
 *
 * - trailing multi-token prediction blocks (`nextn_predict_layers`, Nemotron 3's MTP head) are passed over.
 *
 * What the format does not keep takes transformers' defaults: chunk_size, time_step_min / limit; a
 * `expert_group_used_count` absent means every group may be used (topk_group = n_group).
 */
import { GGUFFile, type GGUFMetaValue, type GGUFTensorInfo, type GGUFVocabularySource, type GGUFWriteType, GGUF_FILE_TYPE,
  sentencePieceVocabulary, specialTokenKeys, writeModelGGUF } from './gguf';
import { type GGMLWriteType, isLlamaQuantizeMix } from './gguf-quantize';
import type { QuantizeOptions } from './gguf';
import { byteLevelVocabulary, isByteLevel } from './gguf-vocab';

/** A layer's tensors: llama.cpp's name after `blk.N.`, the HF name after `model.layers.N.`. */
const LINEAR = (gguf: string, hf: string): Array<[string, string]> => [[`${gguf}.weight`, `${hf}.weight`], [`${gguf}.bias`, `${hf}.bias`]];
const LAYER_TENSORS: Array<[string, string]> = [
  ['attn_norm.weight', 'norm.weight'],
  ...LINEAR('ssm_in', 'mixer.in_proj'), ...LINEAR('ssm_out', 'mixer.out_proj'), ...LINEAR('ssm_conv1d', 'mixer.conv1d'),
  ['ssm_dt.bias', 'mixer.dt_bias'], ['ssm_a', 'mixer.A_log'], ['ssm_d', 'mixer.D'], ['ssm_norm.weight', 'mixer.norm.weight'],
  ...LINEAR('attn_q', 'mixer.q_proj'), ...LINEAR('attn_k', 'mixer.k_proj'), ...LINEAR('attn_v', 'mixer.v_proj'), ...LINEAR('attn_output', 'mixer.o_proj'),
  ...LINEAR('ffn_up', 'mixer.up_proj'), ...LINEAR('ffn_down', 'mixer.down_proj'),
  ['ffn_gate_inp.weight', 'mixer.gate.weight'], ['exp_probs_b.bias', 'mixer.gate.e_score_correction_bias'],
  ['ffn_up_exps.weight', 'mixer.experts.up_proj'], ['ffn_down_exps.weight', 'mixer.experts.down_proj'],
  ...LINEAR('ffn_up_shexp', 'mixer.shared_experts.up_proj'), ...LINEAR('ffn_down_shexp', 'mixer.shared_experts.down_proj'),
  ...LINEAR('ffn_latent_down', 'mixer.fc1_latent_proj'), ...LINEAR('ffn_latent_up', 'mixer.fc2_latent_proj'),
];
const TOP_TENSORS: Array<[string, string]> = [['token_embd.weight', 'model.embeddings.weight'], ['output_norm.weight', 'model.norm_f.weight'], ['output.weight', 'lm_head.weight']];

/** The HF name (the model's: `model.` prefix, experts stacked) of a llama.cpp NemotronH tensor name, or null. */
export function hfNameOfNemotronHGGUF(name: string): string | null {
  const top = TOP_TENSORS.find(([g]) => g === name);
  if (top) return top[1];
  const m = /^blk\.(\d+)\.(.+)$/.exec(name);
  const known = m && LAYER_TENSORS.find(([g]) => g === m[2]);
  return m && known ? `model.layers.${m[1]}.${known[1]}` : null;
}

export function ggufNameOf(hf: string): string {
  const top = TOP_TENSORS.find(([, h]) => h === hf);
  if (top) return top[0];
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  const known = m && LAYER_TENSORS.find(([, h]) => h === m[2]);
  if (!m || !known) throw new Error(`writeNemotronHGGUF: ${hf} is not a weight of a NemotronH causal LM`);
  return `blk.${m[1]}.${known[0]}`;
}

/**
 * Llama's permute of q/k rows (convert_hf_to_gguf.py's LlamaModel.permute) and its inverse: within each of `heads`
 * heads, rows [first half, second half] ↔ interleaved pairs.
 */
export function permuteRows(data: Float32Array, rows: number, heads: number, inverse: boolean): Float32Array {
  const cols = data.length / rows;
  const half = rows / heads / 2;
  const out = new Float32Array(data.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        // HF row (h, j, i) is stored at (h, i, j).
        const hfRow = h * 2 * half + j * half + i;
        const storedRow = h * 2 * half + i * 2 + j;
        const [from, to] = inverse ? [storedRow, hfRow] : [hfRow, storedRow];
        out.set(data.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}

/** A NemotronH GGUF read as a checkpoint: config.json's fields from its metadata, the weights under the model's names. */
export class NemotronHGGUF {
  readonly file: GGUFFile;
  readonly architecture: string;
  private readonly byHfName = new Map<string, GGUFTensorInfo>();
  private configCache: Record<string, unknown> | null = null;
  /** Trailing multi-token prediction blocks the file holds (left out of the model). */
  readonly mtpBlocks: number = 0;

  private constructor(readonly path: string) {
    this.file = GGUFFile.open(path);
    try {
      this.architecture = String(this.file.get('general.architecture'));
      if (this.architecture !== 'nemotron_h' && this.architecture !== 'nemotron_h_moe') {
        throw new Error(`${path}: general.architecture is ${JSON.stringify(this.file.get('general.architecture'))}, expected "nemotron_h" or "nemotron_h_moe" (a NemotronH GGUF)`);
      }
      // Multi-token prediction blocks (Nemotron 3's MTP head, `nextn_predict_layers` of them) come last; transformers'
      // causal LM has no place for them, so they are passed over (llama.cpp uses them for speculative drafts).
      const blocks = Number(this.file.get(`${this.architecture}.block_count`));
      const nextn = Number(this.file.get(`${this.architecture}.nextn_predict_layers`) ?? 0);
      this.mtpBlocks = nextn;
      for (const info of this.file.tensors.values()) {
        const block = /^blk\.(\d+)\./.exec(info.name);
        if (nextn > 0 && block && Number(block[1]) >= blocks - nextn) continue;
        const hf = hfNameOfNemotronHGGUF(info.name);
        if (hf === null) throw new Error(`${path}: tensor ${info.name} is not one of a NemotronH model's (llama.cpp names: token_embd, blk.N.ssm_in, blk.N.attn_q, …)`);
        this.byHfName.set(hf, info);
      }
      if (!this.byHfName.has('model.embeddings.weight')) throw new Error(`${path} has no token_embd.weight: a vocabulary-only GGUF holds no model`);
    } catch (e) {
      this.file.close();
      throw e;
    }
  }

  static open(path: string): NemotronHGGUF {
    return new NemotronHGGUF(path);
  }

  /** config.json as transformers would write it for this model (nemotron_h). */
  configJson(): Record<string, unknown> {
    if (this.configCache) return this.configCache;
    const meta = (key: string) => this.file.get(`${this.architecture}.${key}`);
    const num = (key: string, fallback?: number): number => {
      const v = meta(key);
      // Per-layer arrays (head_count_kv, feed_forward_length): the layers that have one agree; take the largest.
      const value = Array.isArray(v) ? Math.max(...(v as number[])) : v;
      if (typeof value === 'number') return value;
      if (fallback !== undefined) return fallback;
      throw new Error(`${this.path}: the GGUF metadata has no ${this.architecture}.${key}`);
    };
    const layers = num('block_count') - this.mtpBlocks;
    const has = (name: string) => this.byHfName.has(name);
    const layerTypes = Array.from({ length: layers }, (_, i): 'mamba' | 'attention' | 'moe' | 'mlp' => {
      const p = `model.layers.${i}.mixer`;
      if (has(`${p}.in_proj.weight`)) return 'mamba';
      if (has(`${p}.q_proj.weight`)) return 'attention';
      if (has(`${p}.experts.up_proj`)) return 'moe';
      if (has(`${p}.up_proj.weight`)) return 'mlp';
      throw new Error(`${this.path}: layer ${i} has none of ssm_in, attn_q, ffn_up_exps, ffn_up`);
    });
    const first = (type: string) => (layerTypes as string[]).indexOf(type);
    const hidden = num('embedding_length');
    const heads = num('attention.head_count');
    const kvHeads = num('attention.head_count_kv', heads);
    const timeStepRank = num('ssm.time_step_rank');
    const moe = layerTypes.includes('moe');
    const attention = first('attention');
    if (attention >= 0 && (has(`model.layers.${attention}.mixer.q_proj.bias`) || has(`model.layers.${attention}.mixer.o_proj.bias`))) {
      throw new Error(`${this.path}: attention biases (attn_q.bias, …) are not part of NemotronH as transformers defines it`);
    }
    if (moe && num('expert_shared_count', 1) !== 1) throw new Error(`${this.path}: ${num('expert_shared_count')} shared experts a layer; NemotronH has one`);
    const id = (key: string) => (typeof this.file.get(`tokenizer.ggml.${key}`) === 'number' ? this.file.get(`tokenizer.ggml.${key}`) : undefined);
    const mlpLayer = first('mlp') >= 0 ? first('mlp') : first('moe');
    const bias = (name: string) => mlpLayer >= 0 && has(`model.layers.${mlpLayer}.mixer.${name}.bias`);
    const nGroup = num('expert_group_count', 1);
    this.configCache = {
      model_type: 'nemotron_h', architectures: ['NemotronHForCausalLM'],
      vocab_size: this.byHfName.get('model.embeddings.weight')!.shape[0], hidden_size: hidden, layers_block_type: layerTypes,
      mamba_num_heads: timeStepRank, mamba_head_dim: num('ssm.inner_size') / timeStepRank, n_groups: num('ssm.group_count'),
      ssm_state_size: num('ssm.state_size'), conv_kernel: num('ssm.conv_kernel'),
      num_attention_heads: heads, num_key_value_heads: kvHeads > 0 ? kvHeads : heads, head_dim: num('attention.key_length', hidden / heads),
      // The MLP layers' width (an experts-only model's feed_forward_length is the experts').
      intermediate_size: moe ? num('expert_feed_forward_length') : num('feed_forward_length'),
      layer_norm_epsilon: num('attention.layer_norm_rms_epsilon', 1e-5), max_position_embeddings: num('context_length'),
      use_conv_bias: first('mamba') >= 0 && has(`model.layers.${first('mamba')}.mixer.conv1d.bias`),
      use_bias: first('mamba') >= 0 && has(`model.layers.${first('mamba')}.mixer.in_proj.bias`),
      mlp_bias: bias('up_proj') || bias('shared_experts.up_proj'),
      mlp_hidden_act: 'relu2', mamba_hidden_act: 'silu', tie_word_embeddings: !has('lm_head.weight'),
      ...(moe ? {
        n_routed_experts: num('expert_count'), num_experts_per_tok: num('expert_used_count'), moe_intermediate_size: num('expert_feed_forward_length'),
        moe_shared_expert_intermediate_size: num('expert_shared_feed_forward_length'), n_shared_experts: 1,
        norm_topk_prob: meta('expert_weights_norm') !== false, routed_scaling_factor: num('expert_weights_scale', 1),
        n_group: nGroup, topk_group: num('expert_group_used_count', nGroup), moe_latent_size: meta('moe_latent_size') ?? null,
      } : {}),
      bos_token_id: id('bos_token_id'), eos_token_id: id('eos_token_id'), pad_token_id: id('padding_token_id'),
    };
    return this.configCache;
  }

  /** The model's weight names this file holds. */
  names(): string[] {
    return [...this.byHfName.keys()].sort();
  }

  /** The ggml types of the tensors as stored (Q8_0, F32, …). */
  dtypes(): Set<string> {
    return new Set([...this.byHfName.values()].map((t) => t.type));
  }

  totalBytes(): number {
    return [...this.byHfName.values()].reduce((n, t) => n + t.byteLength, 0);
  }

  /** A weight under its HF name, dequantized, in the model's layout (A_log from A, q/k rows unpermuted, …). */
  read(name: string): { shape: number[]; data: Float32Array } {
    const info = this.byHfName.get(name);
    if (!info) throw new Error(`${this.path} has no tensor for ${name}`);
    const { shape, data } = this.file.read(info.name);
    const config = this.configJson();
    if (name.endsWith('.mixer.A_log')) {
      const bad = data.findIndex((a) => !(a < 0));
      if (bad >= 0) throw new Error(`${this.path}: ${info.name}[${bad}] is ${data[bad]}; A = -exp(A_log) must be negative`);
      return { shape: [data.length], data: data.map((a) => Math.log(-a)) };
    }
    if (name.endsWith('.mixer.D') || name.endsWith('.mixer.norm.weight')) return { shape: [data.length], data };
    if (name.endsWith('.mixer.conv1d.weight')) return { shape: [shape[0], shape[shape.length - 1]], data };
    if (name.endsWith('.mixer.q_proj.weight') || name.endsWith('.mixer.k_proj.weight')) {
      const heads = (name.endsWith('q_proj.weight') ? config.num_attention_heads : config.num_key_value_heads) as number;
      return { shape, data: permuteRows(data, shape[0], heads, true) };
    }
    return { shape, data };
  }

  close(): void {
    this.file.close();
  }
}

/** The NemotronH fields writeNemotronHGGUF needs. */
export interface NemotronHGGUFConfig {
  vocabSize: number; hiddenSize: number; layerTypes: string[]; mambaNumHeads: number; mambaHeadDim: number; nGroups: number;
  ssmStateSize: number; convKernel: number; numAttentionHeads: number; numKeyValueHeads: number; headDim: number; intermediateSize: number;
  layerNormEpsilon: number; nRoutedExperts: number; numExpertsPerTok: number; moeIntermediateSize: number; moeSharedExpertIntermediateSize: number;
  nGroup: number; topkGroup: number; normTopkProb: boolean; routedScalingFactor: number; moeLatentSize: number | null;
}

/**
 * Writes a NemotronH model as llama.cpp's convert_hf_to_gguf.py would (see the top of this file): matrices in `type`
 * (F32, F16, Q8_0 or Q4_0) except what llama.cpp keeps in F32 (norms, conv1d, the router, vectors), rows that are not
 * whole quantization blocks in F16 as it falls back; the vocabulary byte-level ("gpt2", the pre-tokenizer named) or, for
 * a SentencePiece-style tokenizer, "llama". `weights`: the model's HF-named tensors (host values).
 */
export async function writeNemotronHGGUF(file: string, config: NemotronHGGUFConfig, weights: Array<{ name: string; shape: number[]; data: Float32Array }>,
  vocabulary: GGUFVocabularySource, type: GGUFWriteType = 'F32', name = 'nemotron_h', options: QuantizeOptions = {}): Promise<void> {
  const moe = config.layerTypes.includes('moe');
  const arch = moe ? 'nemotron_h_moe' : 'nemotron_h';
  const key = (k: string) => `${arch}.${k}`;
  const kv: Array<[string, GGUFMetaValue]> = [
    ['general.architecture', ['str', arch]], ['general.name', ['str', name]],
    [key('block_count'), ['u32', config.layerTypes.length]], [key('embedding_length'), ['u32', config.hiddenSize]],
    [key('attention.head_count'), ['u32', config.numAttentionHeads]], [key('attention.layer_norm_rms_epsilon'), ['f32', config.layerNormEpsilon]],
    // The converter's base class writes it too (from layer_norm_epsilon), and llama.cpp's NemotronH loader requires it.
    [key('attention.layer_norm_epsilon'), ['f32', config.layerNormEpsilon]],
    [key('vocab_size'), ['u32', config.vocabSize]], [key('ssm.conv_kernel'), ['u32', config.convKernel]], [key('ssm.state_size'), ['u32', config.ssmStateSize]],
    [key('ssm.group_count'), ['u32', config.nGroups]], [key('ssm.inner_size'), ['u32', config.mambaNumHeads * config.mambaHeadDim]],
    [key('ssm.time_step_rank'), ['u32', config.mambaNumHeads]],
    [key('attention.head_count_kv'), ['i32s', config.layerTypes.map((t) => (t === 'attention' ? config.numKeyValueHeads : 0))]],
    [key('rope.scaling.finetuned'), ['bool', false]], [key('context_length'), ['u32', 2 ** 20]],
    [key('attention.key_length'), ['u32', config.headDim]], [key('attention.value_length'), ['u32', config.headDim]],
    [key('feed_forward_length'), ['i32s', config.layerTypes.map((t) => (moe ? (t === 'moe' ? config.moeIntermediateSize : 0) : t === 'mlp' ? config.intermediateSize : 0))]],
  ];
  if (moe) {
    kv.push([key('expert_used_count'), ['u32', config.numExpertsPerTok]], [key('expert_feed_forward_length'), ['u32', config.moeIntermediateSize]],
      [key('expert_shared_feed_forward_length'), ['u32', config.moeSharedExpertIntermediateSize]], [key('expert_count'), ['u32', config.nRoutedExperts]],
      [key('expert_shared_count'), ['u32', 1]], [key('expert_weights_norm'), ['bool', config.normTopkProb]],
      [key('expert_weights_scale'), ['f32', config.routedScalingFactor]], [key('expert_group_count'), ['u32', config.nGroup]]);
    // llama.cpp's converter leaves topk_group out (its models keep every group); kept here where it limits the choice.
    if (config.topkGroup !== config.nGroup) kv.push([key('expert_group_used_count'), ['u32', config.topkGroup]]);
    if (config.moeLatentSize !== null) kv.push([key('moe_latent_size'), ['u32', config.moeLatentSize]]);
  }
  kv.push(['general.file_type', ['u32', GGUF_FILE_TYPE[type]]]);
  const json = vocabulary.tokenizerJson();
  if (isByteLevel(json)) {
    const { tokens, types, merges, pre } = byteLevelVocabulary(json);
    kv.push(['tokenizer.ggml.model', ['str', 'gpt2']], ['tokenizer.ggml.pre', ['str', pre]], ['tokenizer.ggml.tokens', ['strs', tokens]],
      ['tokenizer.ggml.token_type', ['i32s', types]], ['tokenizer.ggml.merges', ['strs', merges]]);
  } else {
    const { tokens, scores, types } = sentencePieceVocabulary(vocabulary);
    kv.push(['tokenizer.ggml.model', ['str', 'llama']], ['tokenizer.ggml.tokens', ['strs', tokens]], ['tokenizer.ggml.scores', ['f32s', scores]],
      ['tokenizer.ggml.token_type', ['i32s', types]]);
  }
  kv.push(...specialTokenKeys(vocabulary));

  // llama.cpp keeps these in F32 whatever the file's type (TextModel.prepare_tensors): norms, conv1d, the router.
  const keptF32 = /(_norm\.weight|ssm_conv1d\.weight|ffn_gate_inp\.weight)$/;
  return writeModelGGUF(file, kv, weights.map((w) => {
    const ggufName = ggufNameOf(w.name);
    let { shape, data } = w;
    if (w.name.endsWith('.mixer.A_log')) { shape = [shape[0], 1]; data = data.map((a) => -Math.exp(a)); }
    else if (w.name.endsWith('.mixer.D')) shape = [shape[0], 1];
    else if (w.name.endsWith('.mixer.norm.weight')) shape = [config.nGroups, shape[0] / config.nGroups];
    else if (w.name.endsWith('.mixer.q_proj.weight')) data = permuteRows(data, shape[0], config.numAttentionHeads, false);
    else if (w.name.endsWith('.mixer.k_proj.weight')) data = permuteRows(data, shape[0], config.numKeyValueHeads, false);
    const matrix = shape.length >= 2 && ggufName.endsWith('.weight') && !keptF32.test(ggufName);
    const blockRows = shape[shape.length - 1] % 32 === 0;
    const kind: GGMLWriteType = !matrix || isLlamaQuantizeMix(type) ? 'F32' : (type === 'Q8_0' || type === 'Q4_0') && !blockRows ? 'F16' : type as GGMLWriteType;
    return { name: ggufName, shape, data, type: kind };
  }), type, {
    layerCount: config.layerTypes.length, expertCount: moe ? config.nRoutedExperts : 0,
    // llama.cpp's n_gqa() looks at layer 0 only: no KV heads there (a Mamba layer) gives 0.
    gqa: config.layerTypes[0] === 'attention' ? Math.trunc(config.numAttentionHeads / config.numKeyValueHeads) : 0,
  }, options);
}
