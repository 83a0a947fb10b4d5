// Evaluates identity policies against requests with @cloud-copilot/iam-simulate.
// stdin:  {"policies": [<policy document>, ...],
//          "requests": [{"action", "resource", "principal", "context", "resourcePolicy"?}, ...]}
// A request's resource policy (a KMS key policy, which KMS requires) is evaluated with the identity policies.
// stdout: one entry per request, in order: {"result": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | <error>}
import { readFileSync } from 'node:fs'
import { runSimulation } from '@cloud-copilot/iam-simulate'

const input = JSON.parse(readFileSync(0, 'utf8'))
const identityPolicies = input.policies.map((policy, index) => ({ name: `policy${index}`, policy }))
const results = []
for (const request of input.requests) {
  const response = await runSimulation(
    {
      identityPolicies,
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      resourcePolicy: request.resourcePolicy,
      request: {
        action: request.action,
        principal: request.principal,
        resource: { resource: request.resource, accountId: request.account },
        contextVariables: request.context
      }
    },
    {}
  )
  // A request the simulator refuses to evaluate (unknown action, a context key the action
  // does not take, a malformed policy) is reported as such, never as a decision.
  const errors = response.errors ?? (response.resultType === 'error' ? response : undefined)
  const ignored = response.result?.ignoredContextKeys ?? []
  results.push(
    errors
      ? { result: 'Error', detail: errors }
      : { result: response.overallResult, ignoredContextKeys: ignored }
  )
}
process.stdout.write(JSON.stringify(results))
