import * as tf from '@tensorflow/tfjs';

/**
 * Mean cross entropy over the rows whose label is not `ignoreIndex`, as torch's CrossEntropyLoss computes it
 * (log-softmax in float32, mean over the counted rows). logits [N, C], labels plain integers, length N.
 */
export function crossEntropy(logits: tf.Tensor2D, labels: number[], ignoreIndex = -100): tf.Scalar {
  return tf.tidy(() => {
    const [rows, classes] = logits.shape;
    if (labels.length !== rows) throw new Error(`crossEntropy: ${labels.length} labels for ${rows} rows`);
    const counted = labels.filter((l) => l !== ignoreIndex).length;
    const targets = tf.tensor1d(labels.map((l) => (l === ignoreIndex ? -1 : l)), 'int32');
    // oneHot of -1 is an all-zero row: ignored rows contribute nothing.
    const picked = tf.sum(tf.mul(tf.logSoftmax(logits), tf.oneHot(targets, classes)));
    return tf.div(tf.neg(picked), counted) as tf.Scalar;
  });
}

/** torch's MSELoss (mean). */
export function meanSquaredError(predictions: tf.Tensor, targets: tf.Tensor): tf.Scalar {
  return tf.tidy(() => tf.mean(tf.squaredDifference(predictions, targets)) as tf.Scalar);
}

/** torch's BCEWithLogitsLoss (mean), in its stable form max(x,0) - x·y + log(1 + e^-|x|). */
export function binaryCrossEntropyWithLogits(logits: tf.Tensor, targets: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    const loss = tf.add(tf.sub(tf.relu(logits), tf.mul(logits, targets)), tf.log1p(tf.exp(tf.neg(tf.abs(logits)))));
    return tf.mean(loss) as tf.Scalar;
  });
}
