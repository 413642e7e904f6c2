"""What to say: pure translation between the clients' APIs and the site's protocol (no I/O, no clock).

- ``openai_chat``: the request side of the OpenAI chat API: models and their
  variants (``resolve_model``), ``parse_chat_request``, history flattening,
  thinking controls and the site's turn payloads.
- ``answer``: the site's answer events → OpenAI chunks (``StreamTranslator``), the relay's hot path.
- ``tool_prompts``: tools and structured output described to the model (``AgentSpec``, ``compose_turn``).
- ``tool_replies``: the model's reply read back: the tool-call parser (``CallScanner``,
  ``parse_calls``), the contract check (``judge``) and ``AgentTranslator``.
- ``json_schema``: JSON found in prose, repaired and checked against a JSON Schema.
- ``media_parts``: image, audio, video and file content parts, checked against the site's limits.
- ``generation``: generated images and videos: suffixes, sizes, payloads and answers.
- ``anthropic_messages``: the Anthropic Messages request as the chat request it means
  (``parse_messages_request``, ``map_model``), and the count_tokens estimate.
- ``anthropic_stream``: OpenAI chunks → Messages events (``EventTranslator``), whole messages
  (``accumulate``), stop sequences and the Messages error shape.
- ``openai_responses``: a Responses API body read into the chat request (``parse_responses_request``).
- ``openai_responses_events``: the turn's chat chunks → Responses items and stream events (``ResponseEvents``).

Other folders import the module they need (``from transform import openai_chat``);
importing the package loads none of them.
"""

__all__ = ["anthropic_messages", "anthropic_stream", "answer", "generation", "json_schema", "media_parts", "openai_chat",
           "openai_responses", "openai_responses_events", "tool_prompts", "tool_replies"]
