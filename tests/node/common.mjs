// What the scripts share: the proxy they talk to, from the environment the test sets, and
// the one JSON line of results each scenario prints for the test to assert on.

export const proxy = {
  url: process.env.PROXY_URL, // the mount, e.g. http://127.0.0.1:8000/llm
  key: process.env.PROXY_KEY,
  openaiModel: process.env.PROXY_OPENAI_MODEL,
  anthropicModel: process.env.PROXY_ANTHROPIC_MODEL,
};

// Every wait on the network is bounded by this (milliseconds).
export const TIMEOUT = 10_000;

// Run the scenario named by the first argument (with the others as its arguments) and print
// what it returned. An exception ends the process with its stack on stderr: the test fails.
export async function run(scenarios) {
  const [name, ...args] = process.argv.slice(2);
  const scenario = scenarios[name];
  if (scenario === undefined) {
    throw new Error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(', ')}`);
  }
  process.stdout.write(JSON.stringify(await scenario(...args)) + '\n');
}

export function headers(response) {
  return Object.fromEntries(response.headers.entries());
}

// What the SDK's typed error says: its class, status, request id and headers. Anything
// else (a success, an error of another type) is a failure.
export async function caught(promise, APIError) {
  try {
    await promise;
  } catch (error) {
    if (!(error instanceof APIError)) throw error;
    return {
      class: error.constructor.name,
      status: error.status,
      requestID: error.requestID,
      error: error.error,
      headers: Object.fromEntries(error.headers.entries()),
    };
  }
  throw new Error('the call succeeded; an APIError was expected');
}
