"""What a contract brings in per month, as SQL over the contract columns (live or history).

A contract's price is per invoicing period of its plan, not per month, and live accounts often
leave `Price` null, meaning the plan's price applies:

- effective price: `price`, or the plan's `tariff_price` when the contract has none;
- invoicing period: every `tariff_invoice_every` months when that is 1 or more, or, when it is 0,
  every `tariff_invoice_every_weeks` weeks (1 or more);
- monthly value: effective price x quantity / months, or x 52 / 12 / weeks, rounded to 4 decimals.

A period that is neither (both missing, not whole numbers, 0 and 0) is `unknown`, and so is the
value of a contract without any price: such a contract's `monthly_value` is NULL, it is left out of
every revenue sum and counted apart, never taken for monthly. The plan's fields are display fields
stored as text; one that is not a number counts as missing and fails nothing.
"""

#: The columns `priced()` adds, with what they mean.
MONEY_COLUMNS = {
    "effective_price": "The contract's price per unit and invoicing period: `price`, or the plan's `tariff_price` "
    "when the contract has none; NULL when neither is known.",
    "price_source": "Where effective_price comes from: `contract`, `tariff`, or `unknown`.",
    "billing_period": "The plan's invoicing period: `monthly`, `every N months`, `weekly`, `every N weeks`, or "
    "`unknown` (tariff_invoice_every and tariff_invoice_every_weeks say neither).",
    "monthly_value": "effective_price x quantity per month: / N for a plan invoiced every N months, x 52 / 12 / N "
    "for one invoiced every N weeks, rounded to 4 decimals; NULL when the price or the period is unknown.",
}


def _number(column: str) -> str:
    return f"TRY_CAST(trim({column}) AS DECIMAL(18,4))"


def _whole(column: str) -> str:
    """The text column as a whole number of 0 or more; NULL for anything else."""
    number = _number(column)
    return f"CASE WHEN {number} >= 0 AND {number} = trunc({number}) THEN CAST({number} AS BIGINT) END"


def priced(contracts: str) -> str:
    """A query over `contracts` (a table or history table) adding the columns of `MONEY_COLUMNS`."""
    return f"""
        SELECT *,
               coalesce(price, _plan_price) AS effective_price,
               CASE WHEN price IS NOT NULL THEN 'contract' WHEN _plan_price IS NOT NULL THEN 'tariff'
                    ELSE 'unknown' END AS price_source,
               CASE WHEN _months = 1 THEN 'monthly'
                    WHEN _months > 1 THEN 'every ' || _months || ' months'
                    WHEN _months = 0 AND _weeks = 1 THEN 'weekly'
                    WHEN _months = 0 AND _weeks > 1 THEN 'every ' || _weeks || ' weeks'
                    ELSE 'unknown' END AS billing_period,
               CAST(round(CASE WHEN _months >= 1 THEN coalesce(price, _plan_price) * quantity / _months
                               WHEN _months = 0 AND _weeks >= 1
                                   THEN coalesce(price, _plan_price) * quantity * 52 / (12 * _weeks)
                          END, 4) AS DECIMAL(18,4)) AS monthly_value
        FROM (
            SELECT *, {_number("tariff_price")} AS _plan_price, {_whole("tariff_invoice_every")} AS _months,
                   {_whole("tariff_invoice_every_weeks")} AS _weeks
            FROM {contracts}
        )"""
