"""Request bodies of the OpenAI-compatible API (pydantic): unknown fields are accepted and ignored,
as the hosted API does, so clients that send extra options keep working."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 4  # stop sequences per request, as the hosted API
StopString = Annotated[str, Field(min_length=1, max_length=200)]



# -- tools (see serve/tools.py for what is checked beyond the shape) ------------------------------
MAX_TOOLS = 128  # as the hosted API
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: ToolName
    description: str | None = Field(None, max_length=8192)
    parameters: dict | None = None  # a JSON schema of an object; none: any object
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: ToolName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: ToolChoiceFunction


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: ToolName
    arguments: str = Field(..., max_length=1_000_000)  # a JSON object, as a string (as the API sends it)


class AssistantToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(..., max_length=256)
    type: Literal["function"] = "function"
    function: CalledFunction


class ContentPart(BaseModel):
    """A part of a message's content: text (other kinds, such as images, are not read)."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(..., max_length=64)
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[AssistantToolCall] | None = Field(None, max_length=128)  # an assistant's earlier calls
    tool_call_id: str | None = Field(None, max_length=256)  # a tool message: the call it answers


# -- response_format (see serve/structured.py for what is checked beyond the shape) ------------------
class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = Field(None, max_length=8192)
    schema_: dict | None = Field(None, alias="schema")  # the answer's JSON schema; none: any JSON object
    strict: bool | None = None  # false: schema keywords the grammar does not implement are ignored


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(..., min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)  # with the prompt, within the model's context (engine.submit)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1 - 16)  # choice i samples with seed + i, in torch's int64
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None


class RetrievalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    index: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a registered index's name, never a path
    k: int = Field(3, ge=1, le=20)


class TuneryChatOptions(BaseModel):
    """`extra_body={"tunery": {...}}` on a chat completion."""

    model_config = ConfigDict(extra="forbid", strict=True)
    retrieval: RetrievalOptions | None = None
