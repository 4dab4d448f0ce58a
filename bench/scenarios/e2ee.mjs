// 1:1 at saturation with end-to-end encryption: the saturation scenario with the libsignal
// adapter on every postbox client (`crypto: 'libsignal'` in the params), so every message is
// encrypted once per recipient device and once per other device of the sender, and decrypted on
// arrival. Sessions start with the first messages (PreKey messages, bundles claimed from the
// server's key directory) during the warm-up.
export { run } from './saturation.mjs';
