"""A fake IBKR Flex Web Service (v3) over real HTTP, answering from the real samples in
tests/fixtures/ibkr: SendRequest hands out a reference code and a GetStatement Url on this same
server; GetStatement answers the trades-section sample as the statement.

    with FakeFlex() as flex:
        flex.in_progress(2)               # GetStatement answers 1019 twice, then the statement
        flex.expire_token()               # 1012 "Token has expired." from now on
        flex.statement = flex_statement(account_id="U999999")
        flex.statement = flex_statement(extra_rows=[execution(7001, "20240805;101500")])
        flex.requests.count("/SendRequest"), flex.user_agents

Flex answers every outcome with HTTP 200; a refusal is a FlexStatementResponse with Status
Warn or Fail and an ErrorCode.
"""

from __future__ import annotations

import itertools
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import defusedxml.ElementTree as SafeET
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.builders import FIXTURES
from tests.support.served_app import RequestTally, ServedApp

IBKR_FIXTURES = FIXTURES / "ibkr"
TOKEN = "271828182845904523536028"  # Flex tokens are long digit strings
QUERY_ID = "987654"
ACCOUNT = "U123456"  # the account of the trades-section sample
SERVICE_PATH = "/AccountManagement/FlexWebService"

# IBKR's own wording for the codes the fake can answer.
ERROR_MESSAGES = {
    "1009": "The server is under heavy load. Statement could not be generated at this time. "
    "Please try again shortly.",
    "1011": "Service account is inactive.",
    "1012": "Token has expired.",
    "1014": "Query is invalid.",
    "1015": "Token is invalid.",
    "1017": "Reference code is invalid.",
    "1018": "Too many requests have been made from this token. Please try again shortly.",
    "1019": "Statement generation in progress. Please try again shortly.",
    "1020": "Invalid request or unable to validate request.",
}


def _sample_responses() -> dict[str, str]:
    """The success and failure FlexStatementResponse lines of the SendRequest sample."""
    text = (IBKR_FIXTURES / "ibkr_flex_sendrequest_responses.xml").read_text()
    lines = [line for line in text.splitlines() if line.startswith("<FlexStatementResponse")]
    return {
        "Success": next(line for line in lines if "<Status>Success</Status>" in line),
        "Fail": next(line for line in lines if "<Status>Fail</Status>" in line),
    }


def flex_statement(
    *,
    account_id: str = ACCOUNT,
    extra_rows: Sequence[str] = (),
    generated: str | None = None,
    from_date: str | None = None,
) -> bytes:
    """The trades-section sample as a GetStatement answer: its account, extra <Trade .../> rows
    appended to <Trades>, and `whenGenerated` and the period's `fromDate` replaced if given."""
    text = (IBKR_FIXTURES / "ibkr_flex_trades_section.xml").read_text()
    text = text.replace(f'accountId="{ACCOUNT}"', f'accountId="{account_id}"')
    if generated is not None:
        text = re.sub(r'whenGenerated="[^"]*"', f'whenGenerated="{generated}"', text)
    if from_date is not None:
        text = re.sub(r'fromDate="[^"]*"', f'fromDate="{from_date}"', text)
    rows = "".join(f"    {row}\n" for row in extra_rows)
    return text.replace("   </Trades>", f"{rows}   </Trades>").encode()


def execution(
    trade_id: int,
    when: str,
    *,
    conid: int = 265598,
    symbol: str = "AAPL",
    quantity: str = "10",
    cancels: int | None = None,
    corrects: int | None = None,
    account_id: str = ACCOUNT,
) -> str:
    """An EXECUTION <Trade> row with the attributes of a real Flex row (as in the constructed
    round trips): `cancels` makes it the cancellation ("Ca") of that tradeID, `corrects` the
    correction ("Co"). Its transactionID is the tradeID + 2000."""
    notes, kind, original, side = "", "ExchTrade", "", "BUY"
    if cancels is not None:
        notes, kind, original, side = "Ca", "TradeCancel", str(cancels), "BUY (Ca.)"
    elif corrects is not None:
        notes, kind, original = "Co", "TradeCorrect", str(corrects)
    original_transaction = str(int(original) + 2000) if original else "0"
    return (
        f'<Trade accountId="{account_id}" currency="USD" assetCategory="STK" symbol="{symbol}" '
        f'description="{symbol} INC" conid="{conid}" multiplier="1" tradeID="{trade_id}" '
        f'transactionID="{trade_id + 2000}" ibOrderID="{trade_id + 5000}" dateTime="{when}" '
        f'tradeDate="{when[:8]}" quantity="{quantity}" tradePrice="190.00" proceeds="-1900" '
        'taxes="0" ibCommission="-1.00" ibCommissionCurrency="USD" netCash="-1901" '
        f'openCloseIndicator="O" notes="{notes}" fifoPnlRealized="0" buySell="{side}" '
        f'transactionType="{kind}" origTradeID="{original}" '
        f'origTransactionID="{original_transaction}" origOrderID="0" origTradePrice="0" '
        'levelOfDetail="EXECUTION" />'
    )


def status_response(
    status: str,
    *,
    reference_code: str | None = None,
    url: str | None = None,
    error_code: str | None = None,
) -> bytes:
    """A FlexStatementResponse shaped like the sample's: Success, or Warn/Fail with a code."""
    samples = _sample_responses()
    root: ET.Element = SafeET.fromstring(samples["Success" if status == "Success" else "Fail"])
    for child in list(root):
        root.remove(child)
    ET.SubElement(root, "Status").text = status
    if status == "Success":
        ET.SubElement(root, "ReferenceCode").text = reference_code
        ET.SubElement(root, "Url").text = url
    else:
        ET.SubElement(root, "ErrorCode").text = error_code
        ET.SubElement(root, "ErrorMessage").text = ERROR_MESSAGES.get(error_code or "", "Error.")
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


class FakeFlex(ServedApp):
    def __init__(
        self, *, token: str = TOKEN, query_id: str = QUERY_ID, statement: bytes | None = None
    ) -> None:
        self.token = token
        self.query_id = query_id
        self.statement = statement if statement is not None else flex_statement()
        self.token_expired = False
        self.requests = RequestTally()
        self.user_agents: list[str] = []
        self._references = itertools.count(1_234_567_890)
        self._issued: set[str] = set()
        self._send_request_codes: list[str] = []
        self._statement_codes: list[str] = []
        self._lock = threading.Lock()
        super().__init__(
            Starlette(
                routes=[
                    Route(f"{SERVICE_PATH}/SendRequest", self._send_request),
                    Route(f"{SERVICE_PATH}/GetStatement", self._get_statement),
                ]
            )
        )

    # What a test switches on.

    def reset(self, statement: bytes | None = None) -> None:
        """As new: one server can serve many specifications."""
        with self._lock:
            self.statement = statement if statement is not None else flex_statement()
            self.token_expired = False
            self._send_request_codes.clear()
            self._statement_codes.clear()
            self.user_agents.clear()
        self.requests = RequestTally()

    def in_progress(self, times: int, code: str = "1019") -> None:
        """GetStatement answers Warn `code` (1019: generation in progress) `times` times."""
        with self._lock:
            self._statement_codes.extend([code] * times)

    def fail_statement(self, code: str, times: int = 1) -> None:
        with self._lock:
            self._statement_codes.extend([code] * times)

    def fail_send_request(self, code: str, times: int = 1) -> None:
        """SendRequest answers Fail `code` (1018: too many requests, say) `times` times."""
        with self._lock:
            self._send_request_codes.extend([code] * times)

    def expire_token(self) -> None:
        """From now on the token earns 1012 "Token has expired." at either step."""
        self.token_expired = True

    # The server side.

    def _checked(self, request: Request) -> str | None:
        """The error code a request earns before its own step is looked at, if any."""
        self.user_agents.append(request.headers.get("User-Agent", ""))
        if not request.headers.get("User-Agent") or request.query_params.get("v") != "3":
            return "1020"
        if request.query_params.get("t") != self.token:
            return "1015"
        return "1012" if self.token_expired else None

    async def _send_request(self, request: Request) -> Response:
        with self.requests.request(request.url.path, request.query_params.get("q", "")):
            code = self._checked(request)
            if code is None and request.query_params.get("q") != self.query_id:
                code = "1014"
            with self._lock:
                if code is None and self._send_request_codes:
                    code = self._send_request_codes.pop(0)
                reference = str(next(self._references))
                if code is None:
                    self._issued.add(reference)
            if code is not None:
                return _xml(status_response("Fail", error_code=code))
            url = f"{str(request.base_url).rstrip('/')}{SERVICE_PATH}/GetStatement"
            return _xml(status_response("Success", reference_code=reference, url=url))

    async def _get_statement(self, request: Request) -> Response:
        with self.requests.request(request.url.path, request.query_params.get("q", "")):
            code = self._checked(request)
            with self._lock:
                if code is None and request.query_params.get("q") not in self._issued:
                    code = "1017"
                if code is None and self._statement_codes:
                    code = self._statement_codes.pop(0)
            if code is not None:
                status = "Warn" if code == "1019" else "Fail"
                return _xml(status_response(status, error_code=code))
            return _xml(self.statement)


def _xml(body: bytes) -> Response:
    return Response(body, media_type="text/xml")
