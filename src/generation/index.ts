import { NemotronForCausalLM } from '../../models/nemotron/heads';
import { IntMatrixLike } from '../tensors';
import { GenerateOptions, GenerateOutput, GenerationStep, generate, generateStream } from './generate';

export * from './generate';
export * from './processors';
export { type StepDecoder, decoderFor, nemotronDecoder, nemotronHDecoder } from './decoder';
export { type BeamSearchInputs, type BeamSearchOutput, type BeamSearchSettings, beamSearch } from './beam-search';
export { CandidateSource, DraftModelOptions, type SequenceRunner, draftModelSource, lookupCandidates, promptLookupSource, sequenceRunner, speculativeDecode } from './speculative';

// generate() lives outside the model (cache and decoding loop are the caller's business, as in mlx-lm);
// these methods give the transformers-style call `model.generate(ids, options)`.
declare module '../../models/nemotron/heads' {
  interface NemotronForCausalLM {
    generate(inputIds: IntMatrixLike, options?: GenerateOptions): Promise<GenerateOutput>;
    generateStream(inputIds: IntMatrixLike, options?: GenerateOptions): AsyncGenerator<GenerationStep, void>;
  }
}

NemotronForCausalLM.prototype.generate = function (this: NemotronForCausalLM, inputIds: IntMatrixLike, options?: GenerateOptions) {
  return generate(this, inputIds, options);
};
NemotronForCausalLM.prototype.generateStream = function (this: NemotronForCausalLM, inputIds: IntMatrixLike, options?: GenerateOptions) {
  return generateStream(this, inputIds, options);
};
export * from './grammar';
