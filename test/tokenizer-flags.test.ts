import * as fs from 'fs';
import * as path from 'path';
import { expect } from 'chai';
import { NemotronTokenizer } from '../src/tokenizer';

const FIXTURES = path.resolve(__dirname, '../../test/fixtures');

interface FlagCase {
  post_processor: string;
  flags: { add_bos_token?: boolean; add_eos_token?: boolean };
  tokenizer_class: string;
  single: number[];
  pair: number[];
}

describe('special tokens around a text: tokenizer.json\'s post-processor decides, as in transformers 5', () => {
  const fixture = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'tokenizer-flags', 'cases.json'), 'utf8')) as {
    transformers: string; text: string; pair: string; post_processors: Record<string, object | null>; cases: FlagCase[];
  };
  const baseJson = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'tokenizer', 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  const baseConfig = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'tokenizer', 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;

  it(`every post-processor × add_bos_token/add_eos_token setting × class gives transformers ${'5'}'s ids (scripts/reference/tokenizer_flags_fixtures.py)`, async () => {
    expect(fixture.cases).to.have.length(30);
    // The flags do not change what transformers adds: they would, were they read.
    const differs = fixture.cases.some((c) => c.flags.add_bos_token === false && c.post_processor !== 'none' && c.single[0] === 2);
    expect(differs, 'a case where add_bos_token: false meets a BOS template').to.equal(true);
    for (const c of fixture.cases) {
      const { add_bos_token: _b, add_eos_token: _e, ...config } = baseConfig;
      const tokenizer = await NemotronTokenizer.fromJSON({ ...baseJson, post_processor: fixture.post_processors[c.post_processor] },
        { ...config, ...c.flags, tokenizer_class: c.tokenizer_class });
      const what = `${c.post_processor} ${JSON.stringify(c.flags)} ${c.tokenizer_class}`;
      expect(tokenizer.encode(fixture.text), what).to.deep.equal(c.single);
      expect(tokenizer.encodePair(fixture.text, fixture.pair).ids, what).to.deep.equal(c.pair);
      expect(tokenizer.addBosToken, what).to.equal(c.single[0] === 2);
      expect(tokenizer.addEosToken, what).to.equal(c.single[c.single.length - 1] === 3);
    }
  });
});
