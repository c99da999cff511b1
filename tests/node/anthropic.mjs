// The Anthropic Node SDK through the proxy: `node anthropic.mjs <scenario> [args]` prints one
// JSON line of what the SDK gave back (see tests/test_node_sdks.py).
import Anthropic, { APIError, toFile } from '@anthropic-ai/sdk';

import { TIMEOUT, caught, headers, proxy, run } from './common.mjs';

// No retries of its own: each request is seen once.
const client = () =>
  new Anthropic({ baseURL: proxy.url, apiKey: proxy.key, maxRetries: 0, timeout: TIMEOUT });
const ask = (model = proxy.anthropicModel) => ({
  model,
  max_tokens: 64,
  messages: [{ role: 'user', content: 'hi' }],
});
const text = (message) =>
  message.content
    .filter((block) => block.type === 'text')
    .map((block) => block.text)
    .join('');

await run({
  // A Messages call; `model` defaults to the Anthropic provider's (an OpenAI one is translated).
  async messages(model) {
    const { data, response, request_id } = await client()
      .messages.create(ask(model))
      .withResponse();
    return {
      text: text(data),
      model: data.model,
      stop_reason: data.stop_reason,
      _request_id: data._request_id,
      request_id,
      headers: headers(response),
    };
  },

  async stream() {
    const stream = client().messages.stream(ask());
    const deltas = [];
    stream.on('text', (delta) => deltas.push(delta));
    const message = await stream.finalMessage();
    return {
      deltas,
      text: text(message),
      stop_reason: message.stop_reason,
      request_id: stream.request_id,
      headers: headers(stream.response),
    };
  },

  async error(model) {
    return caught(client().messages.create(ask(model)), APIError);
  },

  async filesAndModels() {
    const anthropic = client();
    const file = await toFile(Buffer.from('hello'), 'notes.txt', { type: 'text/plain' });
    const uploaded = await anthropic.beta.files.upload({ file });
    const model = await anthropic.models.retrieve(proxy.anthropicModel);
    return {
      file: { id: uploaded.id, filename: uploaded.filename, _request_id: uploaded._request_id },
      model: { id: model.id, type: model.type },
    };
  },
});
