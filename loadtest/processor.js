// Functions of loadtest/artillery.yml: the member of each virtual user and the order bodies.
//
// The price mix is bourse.sizing.workload's (limit orders around a mid price, buys from mid-BAND to
// mid+CROSS steps and sells the other way, so a share trades; resting orders beyond the band); a
// test (tests/sizing/test_loadtest_files.py) loads this file with node and compares the tables.
// Tokens: BOURSE_TOKENS names a `member,token` file, as `loadtest/members.py tokens` prints it.
'use strict';

const fs = require('fs');

const MIXES = [
  // symbol, weight, mid, step, price decimals, amount min, max, unit, amount decimals
  { symbol: 'btc_usd', weight: 0.5, mid: 50000.0, step: 1.0, priceDecimals: 2, amountMin: 1, amountMax: 10, amountUnit: 0.0001, amountDecimals: 4 },
  { symbol: 'eth_usd', weight: 0.3, mid: 3000.0, step: 0.1, priceDecimals: 2, amountMin: 1, amountMax: 10, amountUnit: 0.001, amountDecimals: 3 },
  { symbol: 'eth_btc', weight: 0.2, mid: 0.06, step: 0.0001, priceDecimals: 4, amountMin: 1, amountMax: 10, amountUnit: 0.001, amountDecimals: 3 },
];
const BAND = 20;
const CROSS = 4;
const RESTING_GAP = 5;
const RESTING_SPAN = 40;

let tokens = null;

function loadTokens() {
  const path = process.env.BOURSE_TOKENS;
  if (!path) {
    throw new Error('set BOURSE_TOKENS to a `member,token` file (loadtest/members.py tokens > FILE)');
  }
  const rows = fs.readFileSync(path, 'utf8').split('\n').filter((line) => line.includes(','));
  return rows.map((line) => {
    const [member, token] = line.trim().split(',');
    return { member: Number(member), token };
  });
}

function randint(low, high) {
  return low + Math.floor(Math.random() * (high - low + 1));
}

function pickMix() {
  let draw = Math.random() * MIXES.reduce((sum, mix) => sum + mix.weight, 0);
  for (const mix of MIXES) {
    draw -= mix.weight;
    if (draw < 0) return mix;
  }
  return MIXES[MIXES.length - 1];
}

function mixOf(symbol) {
  return MIXES.find((mix) => mix.symbol === symbol);
}

function price(mix, offset) {
  return (mix.mid + offset * mix.step).toFixed(mix.priceDecimals);
}

function amount(mix) {
  return (randint(mix.amountMin, mix.amountMax) * mix.amountUnit).toFixed(mix.amountDecimals);
}

function side() {
  return Math.random() < 0.5 ? 'buy' : 'sell';
}

function restingPrice(mix, orderSide) {
  const offset = BAND + RESTING_GAP + randint(0, RESTING_SPAN);
  return price(mix, orderSide === 'buy' ? -offset : offset);
}

// flow step: the virtual user's member, token and market
function pickMember(context, events, done) {
  tokens = tokens || loadTokens();
  const row = tokens[Math.floor(Math.random() * tokens.length)];
  context.vars.member = row.member;
  context.vars.token = row.token;
  context.vars.market = pickMix().symbol;
  return done();
}

// beforeRequest hooks: the JSON body of the request
function limitBody(requestParams, context, events, next) {
  const mix = pickMix();
  const orderSide = side();
  const offset = randint(-BAND, CROSS);
  requestParams.json = {
    market: mix.symbol, side: orderSide, type: 'limit',
    price: price(mix, orderSide === 'buy' ? offset : -offset), amount: amount(mix),
  };
  return next();
}

function marketBody(requestParams, context, events, next) {
  const mix = pickMix();
  requestParams.json = { market: mix.symbol, side: side(), type: 'market', amount: amount(mix) };
  return next();
}

function restingBody(requestParams, context, events, next) {
  const mix = pickMix();
  const orderSide = side();
  context.vars.restingMarket = mix.symbol;
  context.vars.restingSide = orderSide;
  requestParams.json = {
    market: mix.symbol, side: orderSide, type: 'limit', price: restingPrice(mix, orderSide), amount: amount(mix),
  };
  return next();
}

function amendBody(requestParams, context, events, next) {
  const mix = mixOf(context.vars.restingMarket);
  requestParams.json = { price: restingPrice(mix, context.vars.restingSide) };
  return next();
}

module.exports = {
  pickMember, limitBody, marketBody, restingBody, amendBody,
  MIXES, BAND, CROSS, RESTING_GAP, RESTING_SPAN,
};
